"""Eval verdicts that cannot mislead: matched baselines for methods that change more than what they compare, image-free
methods flagged and never ranked or judged, Holm's family-wise correction (hand-computed and simulated), no verdicts
for a suite with one reference or one prompt, a fallback style metric labelled as one, content leak in the verdict,
and "prompt adherence lost" only when the whole interval is below the tolerance."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import t as student_t

from llm_dit.config.settings import load_config
from llm_dit.eval.methods import compared, methods_of, preset_methods, shared_settings
from llm_dit.eval.run import IMAGE_FREE, compare_methods, leaderboard, load_eval, primary_metrics
from llm_dit.eval.statistics import (
    ADHERENCE_LOST,
    ADHERENCE_NOT_SHOWN,
    ALPHA,
    LEVEL,
    Estimate,
    Paired,
    adherence_kept,
    adherence_status,
    estimate,
    family_verdicts,
    holm,
    p_greater,
    paired_difference,
    single_level_factor,
)
from llm_dit.eval.suite import load_suite
from llm_dit.report.eval_report import REPORT, style_label
from llm_dit.sweep.run import Run, baseline_of, is_conditioning

from ..conftest import run_main
from .test_eval import SMALL, TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def given_p(p: float, clusters: int = 6) -> Estimate:
    """A paired difference whose one-sided p (clustered t, G - 1 dof, se 1) is `p`."""
    t = float(student_t.isf(p, clusters - 1))
    half = float(student_t.ppf(1 - (1 - LEVEL) / 2, clusters - 1))
    return Estimate(t, t - half, t + half, 24, LEVEL, clusters, 1.0)


KEPT = Estimate(0.0, -0.001, 0.001, 24, LEVEL, 6, 0.0004)
NO_LEAK = given_p(0.9)


# ------------------------------------------------------------------------------------------ family-wise control


def test_holm_on_a_hand_computed_family():
    # sorted: a 0.01 (x3 = 0.03), c 0.03 (x2 = 0.06), b 0.04 (x1 = 0.04, kept monotone: 0.06)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    # m = 4: 0.001 x4 = 0.004; 0.02 x3 = 0.06; 0.03 x2 = 0.06; 0.5 x1 = 0.5; and min(1, .) caps
    four = holm({"a": 0.001, "b": 0.02, "c": 0.03, "d": 0.5})
    assert four == pytest.approx({"a": 0.004, "b": 0.06, "c": 0.06, "d": 0.5})
    assert holm({"a": 0.6, "b": 0.7}) == pytest.approx({"a": 1.0, "b": 1.0}) and holm({}) == {}
    assert holm({"only": 0.02}) == {"only": 0.02}  # one test: Holm is the test itself


def test_the_one_sided_p_value_is_the_clustered_t_the_interval_uses():
    # the 2 x 2 of test_comparison: theta = 3, V = 25/12, G = 2, so t = 3 / sqrt(25/12) on 1 dof (Cauchy):
    # P(T_1 >= t) = 1/2 - arctan(t) / pi
    e = estimate({("r1", "p1", 0): 1.0, ("r1", "p2", 0): 2.0, ("r2", "p1", 0): 3.0, ("r2", "p2", 0): 6.0})
    t = 3 / math.sqrt(25 / 12)
    assert e.se == pytest.approx(math.sqrt(25 / 12)) and e.clusters == 2
    assert p_greater(e) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-12)
    assert pytest.approx((1 - LEVEL) / 2) == ALPHA
    # a family of one: shown at p <= ALPHA exactly when the 95% interval's lower bound is above 0
    for p in (0.001, 0.02, 0.03, 0.3):
        v = family_verdicts({"m": Paired(given_p(p), KEPT, NO_LEAK)})["m"]
        assert v.better == (given_p(p).low > 0) == (p <= ALPHA) and v.family == 1


def test_holm_refuses_what_a_single_test_would_call_better_in_a_family():
    # raw p: 0.005, 0.02, 0.4. Alone, 0.02 <= 0.025 is better; Holm over 3: 0.015 (better), 0.04 (not), 0.4
    paired = {name: Paired(given_p(p), KEPT, NO_LEAK) for name, p in (("a", 0.005), ("b", 0.02), ("c", 0.4))}
    verdicts = family_verdicts(paired)
    assert [verdicts[k].better for k in "abc"] == [True, False, False]
    assert verdicts["b"].style_p == pytest.approx(0.02) and verdicts["b"].style_p_holm == pytest.approx(0.04)
    assert "p 0.0400 (Holm-adjusted over 3 methods) > 0.025" in verdicts["b"].reason
    assert family_verdicts({"b": paired["b"]})["b"].better  # the same numbers, tested alone


def test_with_eleven_null_methods_few_evals_call_one_better_than_caption():
    """11 methods with no effect against caption (paired differences with a reference, a prompt and a cell
    component, 6 references x 6 prompts), 300 evals: the per-method rule (95% CI lower bound above 0) calls at least
    one method better in 14.7% of evals (measured: 44 of 300); Holm over the 11 in 1.0% (3 of 300), within the
    family-wise 2.5% (binomial sd at 300 evals: 0.9%)."""
    rng = np.random.default_rng(2026)
    refs = prompts = 6
    cells = [(f"r{i // prompts}", f"p{i % prompts}", 0) for i in range(refs * prompts)]
    r, p = np.repeat(np.arange(refs), prompts), np.tile(np.arange(prompts), refs)
    per_method = family = 0
    for _ in range(300):
        caption = {c: 0.5 + v for c, v in zip(cells, rng.normal(0, 0.05, len(cells)), strict=True)}

        def null(scale: float = 1.0, caption: dict = caption) -> Estimate | None:
            d = rng.normal(0, 0.02, refs)[r] + rng.normal(0, 0.02, prompts)[p] + rng.normal(0, 0.02, r.size)
            return paired_difference({c: caption[c] + scale * d[i] for i, c in enumerate(cells)}, caption)

        paired = {f"m{k}": Paired(null(), null(0.1), null()) for k in range(11)}
        per_method += any(v.style.low > 0 and adherence_kept(v.adherence) for v in paired.values())
        family += any(v.better for v in family_verdicts(paired).values())
    assert per_method / 300 >= 0.10  # what the verdicts did before: 44 of 300
    assert family / 300 <= 0.05 and family <= 6  # 3 of 300 measured


def scores_of(suite, per_method, seed: int = 0) -> dict:
    """Synthetic eval scores: `per_method[name](rng, base)` -> metrics, `base` the cell's caption metrics."""
    rng = np.random.default_rng(seed)
    scores = {}
    for cell in suite.cells():
        base = {"clip_i": 0.5 + rng.normal(0, 0.05), "clip_t": 0.3 + rng.normal(0, 0.01),
                "dino_leak": 0.2 + rng.normal(0, 0.05)}  # fmt: skip
        for name, make in per_method.items():
            scores[(name, cell.key)] = make(rng, base)
    return scores


def same(rng, base):
    return dict(base)


def shifted(style: float = 0.0, leak: float = 0.0):
    def make(rng, base):
        return {"clip_i": base["clip_i"] + style + rng.normal(0, 0.005), "clip_t": base["clip_t"] + rng.normal(0, 1e-4),
                "dino_leak": base["dino_leak"] + (leak + rng.normal(0, 0.005) if leak else 0.0)}  # fmt: skip

    return make


PRIMARY = {"style": "clip_i", "adherence": "clip_t", "leak": "dino_leak", "style_fallback": None}


def test_a_suite_with_one_reference_or_one_prompt_gets_means_but_no_verdict_or_rank():
    methods = methods_of(["vl:alpha=0.5"])
    for refs, prompts in ((1, 6), (6, 1)):
        suite = load_suite("builtin", references=refs, prompts=prompts, seeds=2)
        scores = scores_of(suite, {"text": same, "caption": same, "vl alpha=0.5": shifted(style=0.1)})
        stats, verdicts = compare_methods(suite, methods, scores, PRIMARY, tolerance=0.01)
        reason = single_level_factor(refs, prompts)
        assert reason and f"the suite has 1 {'reference' if refs == 1 else 'prompt'}" in reason
        assert verdicts["vl alpha=0.5"] .better is False  # fmt: skip
        assert verdicts["vl alpha=0.5"].reason == f"no verdict: {reason}"
        assert stats["vl alpha=0.5"]["metrics"]["clip_i"]["n"] == refs * prompts * 2  # the means are there
        rows = leaderboard(methods, stats, PRIMARY, 0.01, reason)
        assert not any("rank" in r for r in rows) and rows[-1]["status"].startswith("not ranked: the suite has 1")
    assert single_level_factor(2, 2) is None


def test_one_reference_is_a_note_of_the_dry_run(cli, zoo, tmp_path):
    r = cli("eval", "--suite", "builtin", "--references", "1", "--prompts", "3", *TINY, "--dry-run", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["no_verdicts"] == single_level_factor(1, 3)
    notes = [line for line in r.err.splitlines() if line.startswith(("note", "error"))]
    assert notes == [f"note: no verdicts: {single_level_factor(1, 3)}"]  # one line


# -------------------------------------------------------------------------------- prompt adherence, content leak


def test_prompt_adherence_is_lost_only_when_the_whole_interval_is_below_the_tolerance():
    wide = Estimate(-0.005, -0.03, 0.02, 24, LEVEL, 6, 0.01)
    below = Estimate(-0.05, -0.07, -0.02, 24, LEVEL, 6, 0.01)
    assert adherence_status(wide, 0.01) == ADHERENCE_NOT_SHOWN == "prompt adherence not shown kept"
    assert adherence_status(below, 0.01) == ADHERENCE_LOST and adherence_status(KEPT, 0.01) is None
    methods = methods_of(["vl:alpha=0.5"])
    gain = {"mean": 0.1, "low": 0.05, "high": 0.15, "n": 24}
    stats = {m.name: {"cells": 24, "metrics": {}} for m in methods}
    stats["vl alpha=0.5"]["vs_text"] = {"clip_i": gain, "clip_t": wide.as_dict()}
    stats["caption"]["vs_text"] = {"clip_i": gain, "clip_t": below.as_dict()}
    rows = {r["method"]: r["status"] for r in leaderboard(methods, stats, PRIMARY, 0.01)}
    assert rows == {"vl alpha=0.5": "prompt adherence not shown kept", "caption": "prompt adherence lost"}
    v = family_verdicts({"m": Paired(given_p(0.001), wide, NO_LEAK)}, 0.01)["m"]
    assert not v.better and v.reason.startswith("not better: prompt adherence not shown kept: ")


def test_a_method_that_copies_the_references_content_is_not_better_than_caption():
    """Two methods with the same style gain over caption and prompt adherence kept; one also copies the
    reference's content (dino_leak +0.1). Only the other is better."""
    suite = load_suite("builtin", references=4, prompts=6)
    methods = methods_of(["vl:alpha=0.3,0.6"])
    per = {"text": same, "caption": same, "vl alpha=0.3": shifted(0.08, leak=0.1), "vl alpha=0.6": shifted(0.08)}
    _, verdicts = compare_methods(suite, methods, scores_of(suite, per), PRIMARY, tolerance=0.01)
    copy, clean = verdicts["vl alpha=0.3"], verdicts["vl alpha=0.6"]
    assert clean.better and not copy.better
    assert copy.reason.startswith("not better: content leak (dino_leak) +0.1") and "more than caption's" in copy.reason
    assert copy.leak_p <= ALPHA < clean.leak_p and copy.family == clean.family == 2
    assert "style gain (clip_i)" in clean.reason  # the verdict names the metric it used
    no_leak = {k: v for k, v in PRIMARY.items() if k != "leak"}  # no dino model: better cannot be decided
    _, verdicts = compare_methods(suite, methods, scores_of(suite, per), no_leak, tolerance=0.01)
    assert verdicts["vl alpha=0.6"].reason == "undecided: no paired content-leak (dino_leak) metric against caption"


def test_a_fallback_style_metric_is_labelled_as_one_and_named_by_the_verdict():
    scorer = SimpleNamespace(metrics=["clip_t", "clip_i", "dino_leak"], unavailable={"csd": "no converted CSD model"})
    primary = primary_metrics(scorer)
    assert primary["style"] == "clip_i" and primary["leak"] == "dino_leak"
    assert primary["style_fallback"].startswith("clip_i is a fallback style metric (CLIP image similarity")
    assert "no converted CSD model" in primary["style_fallback"] and style_label(primary) == "clip_i, a fallback"
    assert primary_metrics(SimpleNamespace(metrics=["csd", "clip_i"], unavailable={}))["style_fallback"] is None
    suite = load_suite("builtin", references=4, prompts=6)
    methods = methods_of(["vl:alpha=0.5"])
    per = {"text": same, "caption": same, "vl alpha=0.5": shifted(0.08)}
    _, verdicts = compare_methods(suite, methods, scores_of(suite, per), primary, tolerance=0.01)
    assert verdicts["vl alpha=0.5"].reason.startswith("better than caption: style gain (clip_i, a fallback) +0.07")


def test_an_image_free_method_gets_no_rank_and_no_verdict():
    suite = load_suite("builtin", references=4, prompts=6)
    methods = methods_of(["vl:alpha=0.3,0.6"])
    per = {"text": same, "caption": same, "vl alpha=0.3": shifted(0.08), "vl alpha=0.6": shifted(0.08)}
    stats, verdicts = compare_methods(suite, methods, scores_of(suite, per), PRIMARY, tolerance=0.01,
                                      image_free_runs={"vl alpha=0.3": 2})  # fmt: skip
    free = verdicts["vl alpha=0.3"]
    assert not free.better and free.reason.startswith(f"{IMAGE_FREE}: the image has no effect on 2 of its 24 runs")
    assert verdicts["vl alpha=0.6"].better and verdicts["vl alpha=0.6"].family == 1  # not in the family
    rows = {r["method"]: r for r in leaderboard(methods, stats, PRIMARY, 0.01)}
    assert "rank" not in rows["vl alpha=0.3"] and rows["vl alpha=0.3"]["status"] == free.reason
    assert rows["vl alpha=0.6"]["rank"] == 1


# --------------------------------------------------------------------------------------------- matched baselines


def test_methods_that_change_more_than_what_they_compare_get_matched_baselines():
    methods = methods_of(["vl:encoder.think_block=true", "caption:encoder.system_prompt=Be brief",
                          "img2img:strength=0.5:encoder.hidden_layer=-3", "vl:alpha=0.3"])  # fmt: skip
    by = {m.name: m for m in methods}
    assert [m.name for m in methods][:2] == ["text", "caption"]
    think = {"text": "text think_block=True", "caption": "caption think_block=True"}
    assert by["vl think_block=True"].baselines == think
    assert (
        by["text think_block=True"].settings == {"encoder.think_block": True} == by["caption think_block=True"].settings
    )
    assert by["caption system_prompt=Be brief"].baselines == {"text": "text system_prompt=Be brief"}
    assert by["img2img strength=0.5 hidden_layer=-3"].baselines == {
        "text": "text hidden_layer=-3", "caption": "caption hidden_layer=-3"}  # fmt: skip
    assert by["text hidden_layer=-3"].settings == {"encoder.hidden_layer": -3}  # not the strength: it is compared
    assert by["vl alpha=0.3"].baselines == {"text": "text", "caption": "caption"}
    # generation settings too: the same steps for the method and its baselines
    assert methods_of(["vl:steps=4"])[-1].baselines == {"text": "text steps=4", "caption": "caption steps=4"}
    with pytest.raises(Exception, match=r"sets generation\.strength: it acts only in img2img methods"):
        methods_of(["vl:strength=0.5"])


def test_the_think_comparison_preset_is_paired_with_baselines_of_its_think_block():
    base = load_config()  # think_block off: the think_block=False method is paired with the plain baselines
    methods = methods_of(presets=["think_comparison"], base=base)
    by = {m.name: m for m in methods}
    assert by["think_comparison think_block=True"].baselines == {
        "text": "text think_block=True", "caption": "caption think_block=True"}  # fmt: skip
    assert by["think_comparison think_block=False"].baselines == {"text": "text", "caption": "caption"}
    assert len(methods) == 6 and len(preset_methods("think_comparison")) == 2


def test_the_matching_rule_is_the_sweeps():
    """What a method's baselines share is what a sweep run's baseline keeps (`sweep.baseline_of`, by
    `sweep.is_conditioning`); the one addition is an img2img method's strength, which acts only with its init image."""
    settings = {"vl.alpha": 0.3, "vl.blend": "adain", "encoder.think_block": True, "generation.steps": 4,
                "encoder.system_prompt": "x", "models.low_memory": True}  # fmt: skip
    run = Run(prompt="p", image="a.png", label="x", settings=settings)
    from llm_dit.eval.methods import Method

    assert shared_settings(Method(name="m", kind="vl", settings=settings)) == baseline_of(run).settings
    assert all(compared("vl", k) == is_conditioning(k) for k in settings)
    assert compared("img2img", "generation.strength") and not compared("vl", "generation.strength")


def test_the_dry_run_shows_the_matched_baselines(cli, zoo):
    args = ["eval", "--suite", "builtin", "--quick", *TINY, "--method", "vl:encoder.think_block=true", "--dry-run"]
    r = cli(*args, "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert plan["baselines"]["vl think_block=True"] == {
        "text": "text think_block=True", "caption": "caption think_block=True"}  # fmt: skip
    assert plan["methods"] == ["text", "caption", "text think_block=True", "caption think_block=True",
                               "vl think_block=True"]  # fmt: skip
    assert plan["runs"] == 2 + 4 + 2 + 4 + 4  # text runs shared by the references
    r = cli(*args)
    assert "matched baselines: vl think_block=True against text think_block=True and caption think_block=True" in r.out


# ------------------------------------------------------------------------------------------ end to end (tiny)


@pytest.fixture(scope="module")
def matched_eval(tmp_path_factory, zoo):
    """2 references x 2 prompts: an image-free method (alpha 0) and one with a think block, without CSD."""
    out = tmp_path_factory.mktemp("verdicts") / "e"
    args = ["eval", "--suite", "builtin", "--quick", "--models", "tiny", *SMALL, "--metric-models", "tiny,csd=none"]
    args += ["--method", "vl:alpha=0", "--method", "vl:encoder.think_block=true", "-o", str(out)]
    assert run_main(*args) == 0
    return out


def test_an_image_free_method_is_flagged_in_every_output(matched_eval):
    data = load_eval(matched_eval).data
    runs = [r for r in data["runs"] if r["method"] == "vl alpha=0"]
    assert len(runs) == 4 and all(r["image_dependence"]["image_free"] is True for r in runs)
    assert all(r["image_dependence"]["image_free"] is None for r in data["runs"] if r["method"] == "text")
    assert data["image_free"] == {"vl alpha=0": 4} and data["stats"]["vl alpha=0"]["image_free_runs"] == 4
    verdict = data["verdicts"]["vl alpha=0"]
    assert not verdict["better"] and verdict["reason"].startswith(f"{IMAGE_FREE}: the image has no effect on 4")
    row = next(r for r in data["leaderboard"] if r["method"] == "vl alpha=0")
    assert "rank" not in row and row["status"].startswith(IMAGE_FREE) and "vl alpha=0" not in data["settings"]["family"]
    board = (matched_eval / "leaderboard.md").read_text()
    assert "**No image effect (image-free runs, no rank, no verdict): vl alpha=0 (4 runs).**" in board
    html = (matched_eval / REPORT).read_text()
    assert 'data-method="vl alpha=0" data-image-free="true"' in html and "No image effect" in html
    assert html.count('<span class="badge">IMAGE-FREE</span>') >= 4 + 2  # 4 strips, the leaderboard, the means


def test_matched_baselines_run_with_the_methods_settings_and_are_what_it_is_compared_with(matched_eval):
    from llm_dit.sweep.dir import SweepDir

    data = load_eval(matched_eval).data
    method = next(m for m in data["methods"] if m["name"] == "vl think_block=True")
    assert method["baselines"] == {"text": "text think_block=True", "caption": "caption think_block=True"}
    records = {r.id: r for r in SweepDir(matched_eval / "runs").runs()}
    runs = {(r["method"], r["cell"]): r for r in data["runs"]}
    for name in ("text think_block=True", "caption think_block=True", "vl think_block=True"):
        for cell in data["cells"]:
            assert records[runs[(name, cell["id"])]["run"]].settings["encoder.think_block"] is True
    for kind, against in method["baselines"].items():
        diffs = [runs[("vl think_block=True", c["id"])]["metrics"]["clip_t"] - runs[(against, c["id"])]["metrics"]
                 ["clip_t"] for c in data["cells"]]  # fmt: skip
        vs = data["stats"]["vl think_block=True"][f"vs_{kind}"]["clip_t"]
        assert vs["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert data["verdicts"]["vl think_block=True"]["family"] == 1  # the image-free method is not in the family
    assert "Matched baselines (same settings but what is compared): " in (matched_eval / "leaderboard.md").read_text()


def test_a_fallback_style_metric_is_labelled_in_every_output(matched_eval):
    data = load_eval(matched_eval).data
    assert data["primary"]["style"] == "clip_i" and data["primary"]["style_fallback"].startswith(
        "clip_i is a fallback style metric"
    )
    assert "style gain (clip_i, a fallback)" in data["verdicts"]["vl think_block=True"]["reason"]
    board = (matched_eval / "leaderboard.md").read_text()
    html = (matched_eval / REPORT).read_text()
    for text in (board, html):
        assert "Style metric fallback: clip_i is a fallback style metric" in text
        assert "style gain (clip_i, a fallback)" in text
    assert "order (by lower bound)" in board and "not a tested ranking" in board and "Holm-corrected" in board
    assert "not a tested ranking" in html and "Holm-corrected" in html
