"""A sweep run is a typed value (`sweep.run.Run`): its id rule, its records, and sweep directories written before
runs were typed, which must still read and resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.run import Run, RunResult, baseline_of, baseline_pairs, read_results, run_id
from llm_dit.sweep.spec import ListedRun, SweepSpec, expand, resolve_spec

from ..conftest import REPO

LEGACY = Path(__file__).parents[1] / "data" / "legacy-sweep-4d6a248"


def specs() -> dict[str, SweepSpec]:
    """Sweeps whose every kind of run (variants, baselines, listed runs; reference sets and their weights, style
    files, negative, neutral and init images, steering, encoder settings) has its id pinned below."""
    p = ["a lighthouse"]
    return {
        "alpha, two seeds": resolve_spec(SweepSpec(prompts=p, images=["ref.png"], seeds=[0, 7]), "alpha", {}, {}),
        "composability": resolve_spec(SweepSpec(prompts=p, images=["a.png", "b.png"]), "composability", {}, {}),
        "style": SweepSpec(prompts=p, style=["s.safetensors:0.5", "t.safetensors"], axes={"vl.alpha": [0.3, 0.6]}),
        "negative image": SweepSpec(
            prompts=p, images=["ref.png"], negative_image="neg.png", axes={"vl.alpha": [0.3, 0.6]}
        ),
        "steer": resolve_spec(SweepSpec(prompts=p, steer="dir.safetensors"), "steering", {}, {}),
        "style_delta": resolve_spec(
            SweepSpec(prompts=p, images=["ref.png"], neutral_image="neutral.png"), "style_delta", {}, {}
        ),
        "img2img": resolve_spec(SweepSpec(prompts=p, images=["ref.png"]), "strength_sweep", {}, {}),
        "think, no baselines": resolve_spec(
            SweepSpec(prompts=p, images=["ref.png"], baseline=False), "think_comparison", {}, {}
        ),
        "variants": resolve_spec(SweepSpec(prompts=["a", "b"], images=["ref.png"]), "vl_only_vs_qwen3", {}, {}),
        "inject": resolve_spec(SweepSpec(prompts=p, images=["ref.png"]), "inject", {}, {}),
        "listed runs": SweepSpec(
            fixed={"generation.steps": 2},
            runs=[
                ListedRun(prompt="a", label="text"),
                ListedRun(prompt="a", image="ref.png", label="vl", settings={"vl.alpha": 0.4, "generation.seed": 3}),
                ListedRun(prompt="a", steer="dir.safetensors", init_image="init.png", settings={"vl.alpha": 1.0}),
            ],
        ),
    }


# Pinned, not computed: the ids (and, per run, the id of the baseline it names, "-" for none) that `expand` of
# commit 4d6a248 (the last release whose runs were dicts, hashed by `spec.run_id` with `OPTIONAL_FIELDS`) gives for
# `specs()`, produced by running that commit's `expand` on these specs and printing `run["id"]` and
# `run.get("baseline")`. Sweep directories of that release resume only if these stay; they also name image files.
LEGACY_IDS = {
    "alpha, two seeds": "264cd5fd2223 1cd8cceaa1eb da2d47e154e8 bb0e2f6cb758 d64ca6083fc7 c5a418d88621 "
    "1bdb02534277 0f54d50a4996 cef8ba7326f2 f863e1788970 17e7284c3845 a5ab80ebba9a",
    "composability": "264cd5fd2223 d2452a108f02 ab5bbd70ec7a 08838135bbee abafa3f494c7 5a90e1db27f8 422e8f109503 "
    "9ed52cbb9d4c e116edd77aaa 7e15bd5fe0d0 65ac8323f760 7f1dbc94ea06 3a8c5c096bd7 dc97077968f9 eddadf7d3bd9 "
    "5be4b6fd4bad",
    "style": "264cd5fd2223 9e401c20fb6c 3d8a6ec6d364",
    "negative image": "264cd5fd2223 907f1de3cb42 becb4c797e55",
    "steer": "264cd5fd2223 540e6ccab7b2 37ef6e0f3d07 539bd4c393e2",
    "style_delta": "264cd5fd2223 995f1f72595d 8db910776c12 4da95011a980",
    "img2img": "be56e594789e 1afe936975db b75944a466be de9fe2048493 e3fa112f5b63 742583798bfc d7754ea8949c "
    "9c8f3b9cf891",
    "think, no baselines": "b7f62a155476 60c865252cc8",
    "variants": "8b930f8c39d0 535228f6d029 3d895a241d74 674c0873e3b7 914a61d7d91a 4120b1ad41f4 d5392a5c3cd4 "
    "90821fc21b42",
    "inject": "264cd5fd2223 a448f53ef162 ba0331e4006c 272be4d291a9",
    "listed runs": "5c998d356601 ffc44dd3b166 26db9c596442",
}
LEGACY_BASELINES = {
    "alpha, two seeds": "- 264cd5fd2223 264cd5fd2223 264cd5fd2223 264cd5fd2223 264cd5fd2223 - 1bdb02534277 "
    "1bdb02534277 1bdb02534277 1bdb02534277 1bdb02534277",
    "composability": "- " + " ".join(["264cd5fd2223"] * 15),
    "style": "- 264cd5fd2223 264cd5fd2223",
    "negative image": "- 264cd5fd2223 264cd5fd2223",
    "steer": "- 264cd5fd2223 264cd5fd2223 264cd5fd2223",
    "style_delta": "- 264cd5fd2223 264cd5fd2223 264cd5fd2223",
    "img2img": "- be56e594789e - b75944a466be - e3fa112f5b63 - d7754ea8949c",
    "think, no baselines": "- -",
    "variants": "- 8b930f8c39d0 8b930f8c39d0 8b930f8c39d0 - 914a61d7d91a 914a61d7d91a 914a61d7d91a",
    "inject": "- 264cd5fd2223 264cd5fd2223 264cd5fd2223",
    "listed runs": "- - -",
}


@pytest.mark.parametrize("name", list(LEGACY_IDS))
def test_run_ids_are_those_the_release_before_typed_runs_wrote(name):
    runs = expand(specs()[name])
    assert [r.id for r in runs] == LEGACY_IDS[name].split()
    assert [r.baseline or "-" for r in runs] == LEGACY_BASELINES[name].split()
    assert all(r.id == run_id(r) for r in runs)
    assert all(baseline_of(v).id == v.baseline for v in runs if v.baseline)


def test_the_id_hashes_what_determines_the_image_and_fields_added_later_only_when_set():
    run = Run(prompt="a", image="ref.png", label="one", settings={"vl.alpha": 0.3})
    assert Run(prompt="a", image="ref.png", label="two", settings={"vl.alpha": 0.3}, baseline="b").id == run.id
    for changed in (
        {"prompt": "b"},
        {"image": "other.png"},
        {"init_image": "init.png"},
        {"steer": "dir.safetensors"},
        {"neutral_image": "n.png"},
        {"kind": "baseline"},
        {"settings": {"vl.alpha": 0.6}},
        {"reference_weights": [0.5, 0.5]},
        {"style": ["s.safetensors"]},
        {"negative_image": "neg.png"},
    ):
        assert Run(**{"prompt": "a", "image": "ref.png", "settings": {"vl.alpha": 0.3}} | changed).id != run.id
    # unset, the fields added last are not in the hash: a run that does not use them hashes as it did as a dict
    as_dict = {"prompt": "a", "image": "ref.png", "init_image": None, "steer": None, "neutral_image": None}
    as_dict |= {"kind": "variant", "settings": {"vl.alpha": 0.3}}
    assert run.id == hashlib.sha256(json.dumps(as_dict, sort_keys=True).encode()).hexdigest()[:12]


def test_records_round_trip_and_leave_out_unset_later_fields():
    runs = [r for spec in specs().values() for r in expand(spec)]
    for run in runs:
        record = json.loads(json.dumps(run.as_record()))
        assert Run.from_record(record) == run and next(iter(record)) == "id"
        for name in ("reference_weights", "style", "negative_image"):
            assert (name in record) == (getattr(run, name) is not None)
    result = RunResult.of(runs[1], status="ok", output=f"images/{runs[1].id}.png", record={"timings_s": {}})
    line = json.loads(json.dumps(result.as_record()))
    assert "error" not in line and RunResult.from_record(line) == result and result.id == runs[1].id
    failed = RunResult.of(runs[1], status="failed", error="RuntimeError: boom").as_record()
    assert failed["status"] == "failed" and "output" not in failed and "record" not in failed
    with pytest.raises(ValueError):
        Run(prompt="a", colour="red")  # made in code: an unknown field is a mistake


def test_a_record_keeps_its_id_ignores_unknown_keys_and_is_refused_without_id_or_prompt():
    # a record of an older release (no neutral_image, an extra key) keeps the id that names its image
    old = {"id": "0123456789ab", "prompt": "a", "image": "r.png", "kind": "variant", "settings": {}, "later": 1}
    assert Run.from_record(old).id == "0123456789ab" and Run.from_record(old).neutral_image is None
    for bad in ({"prompt": "a"}, {"id": "x"}, {"id": "x", "prompt": "a", "kind": "other"}):
        with pytest.raises(ValueError):
            Run.from_record(bad)
    with pytest.raises(ValueError):
        RunResult.from_record(old)  # a result line has a status


def test_results_written_before_baselines_were_matched_are_paired_by_prompt_image_and_seed():
    def line(id_: str, kind: str, image: str | None, seed: int, **more) -> dict:
        settings = {"generation.seed": seed}
        return {"id": id_, "kind": kind, "prompt": "p", "image": image, "settings": settings, "status": "ok"} | more

    records = [
        line("b0", "baseline", "r.png", 0),  # before matching, a baseline kept its group's image
        line("v0", "variant", "r.png", 0),
        line("v1", "variant", "r.png", 1),  # no baseline in its group
        line("v2", "variant", "r.png", 0, baseline=None),  # a matched record that names none
        {"id": "torn"},
    ]
    results = read_results(records)
    assert [r.id for r in results] == ["b0", "v0", "v1", "v2"]
    assert baseline_pairs(results) == {"v0": "b0", "v1": None, "v2": None}
    assert results[1].id == "v0"  # pairing keeps the id as written


def legacy_sweep(tmp: Path) -> Path:
    """A copy of the sweep directory commit 4d6a248 wrote (see tests/data/legacy-sweep-4d6a248/README.md), its
    paths made this machine's: the reference image in this checkout, the tiny zoo of this test session."""
    out = tmp / "legacy"
    shutil.copytree(LEGACY, out, ignore=shutil.ignore_patterns("README.md"))
    return out


def test_a_sweep_written_by_4d6a248_reads_resumes_only_its_missing_runs_and_reports(cli, zoo, tmp_path, monkeypatch):
    out = legacy_sweep(tmp_path)
    spec = json.loads((out / "spec.json").read_text())
    # the models were where that machine's zoo was: here, this session's zoo
    spec["config"]["models"] |= {"zimage": str(zoo / "zimage"), "vl": str(zoo / "qwen3-vl")}
    (out / "spec.json").write_text(json.dumps(spec))
    sweep = SweepDir(out)
    planned, before = sweep.plan(), sweep.runs()
    assert [r.id for r in planned] == [r["id"] for r in spec["runs"]] and len(planned) == 3
    assert len(before) == 2 and all(r.ok and (out / str(r.output)).is_file() for r in before)
    assert baseline_pairs(before) == {before[1].id: before[0].id}
    monkeypatch.chdir(REPO)  # the run's reference image path is relative to the checkout it was made in
    args = ["--models", "tiny", "-i", "examples/reference-images/sunset.png", "-p", "a lighthouse"]
    args += ["--alphas", "0.3,0.6", "--width", "64", "--height", "64", "--steps", "2", "-o", out]
    r = cli("sweep", *args, "--resume")
    assert r.code == 0, r.err
    after = SweepDir(out).runs()
    assert [x.id for x in after] == [x.id for x in planned] and all(x.ok for x in after)
    assert after[:2] == before  # the two done runs were not run again
    assert json.loads((out / "sweep.json").read_text())["ran_now"] == 1
    html = (out / "report.html").read_text()
    assert all(f'id="run-{x.id}"' in html for x in after) and "3 of 3 runs done; 0 failed" in html
