"""`llm-dit eval`: suites, methods, each (method, cell) one run of one sweep, scoring paired by cell, eval.json and
the leaderboard, refusals before any work, and resuming after SIGKILL without redoing finished runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from scipy.stats import t as student_t

from llm_dit.core.errors import UserError
from llm_dit.eval.methods import (
    OMNI_REFUSAL,
    Method,
    check_strengths,
    method_run,
    methods_of,
    parse_method,
    preset_methods,
)
from llm_dit.eval.run import EVAL, RUNS, eval_spec, load_eval, run_eval
from llm_dit.eval.statistics import clustered_ci, single_level_factor
from llm_dit.eval.suite import BUILTIN_PROMPTS, QUICK, builtin_references, load_suite
from llm_dit.scoring.scorer import MetricScorer, ScoreItem, Scoring
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.runner import Session
from llm_dit.sweep.spec import expand

from ..conftest import REPO, signalling_cli, tiny_config

SMALL = ["--width", "32", "--height", "32", "--steps", "2"]
TINY = ["--models", "tiny", *SMALL, "--metric-models", "tiny"]
EXAMPLES = REPO / "examples" / "reference-images"

pytestmark = pytest.mark.usefixtures("one_thread")
PLAIN = {"text": "text", "caption": "caption"}  # the baselines of a method that sets only what it compares


# ------------------------------------------------------------------------------------------------------ suites


def test_builtin_suite_sizes_and_quick():
    full = load_suite("builtin")
    assert len(full.references) == 8 == len(builtin_references()) and full.prompts == list(BUILTIN_PROMPTS)
    assert len(BUILTIN_PROMPTS) == 24 == len(set(BUILTIN_PROMPTS))
    quick = load_suite("builtin", quick=True)
    assert (len(quick.references), len(quick.prompts), len(quick.seeds)) == tuple(QUICK.values())
    sized = load_suite("builtin", references=3, prompts=5, seeds=2)
    cells = sized.cells()
    assert len(cells) == 30 == len({c.key for c in cells})  # (reference hash, prompt, seed) identifies a cell
    assert sized.seeds == [0, 1] and sized.as_dict()["cells"] == 30
    with pytest.raises(UserError, match="'references' 9 is more than"):
        load_suite("builtin", references=9)
    with pytest.raises(UserError, match="'seeds' must be at least 1"):
        load_suite("builtin", seeds=0)


def test_folder_suite_needs_prompts_and_keeps_one_reference_per_content(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((EXAMPLES / "sunset.png").read_bytes())  # the same image twice
    (folder / "c.png").write_bytes((EXAMPLES / "house2.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="needs a prompts file"):
        load_suite(str(folder))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a boat\na tree\n")
    suite = load_suite(str(folder), prompts_file=prompts)
    assert [r.name for r in suite.references] == ["a", "c"] and suite.prompts == ["a boat", "a tree"]
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"broken\.png"):
        load_suite(str(folder), prompts_file=prompts)
    with pytest.raises(UserError, match="not builtin, hf:DATASET or a folder"):
        load_suite(str(tmp_path / "nothere"))


def test_datasets_suite_from_a_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")  # the optional extra 'datasets'
    images = [Image.open(EXAMPLES / n).convert("RGB").resize((32, 32)) for n in ("sunset.png", "house2.png")]
    data = datasets.Dataset.from_dict(
        {"picture": [images[0], images[1], images[0]], "text": ["a boat", "a tree", "a boat"]},
        features=datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")}),
    )
    data.save_to_disk(str(tmp_path / "ds"))
    store = tmp_path / "eval" / "references"
    suite = load_suite(f"hf:{tmp_path / 'ds'}", image_column="picture", prompt_column="text", store=store)
    assert len(suite.references) == 2 and suite.prompts == ["a boat", "a tree"]  # distinct images and prompts
    assert all(Path(r.path).parent == store and Path(r.path).is_file() for r in suite.references)
    assert Image.open(suite.references[0].path).convert("RGB").tobytes() == images[0].tobytes()
    assert suite.source["kind"] == "datasets" and suite.source["image_column"] == "picture"
    again = load_suite(f"hf:{tmp_path / 'ds'}", image_column="picture", prompt_column="text", store=store)
    assert [r.hash for r in again.references] == [r.hash for r in suite.references]
    with pytest.raises(UserError, match="has no column 'image'"):
        load_suite(f"hf:{tmp_path / 'ds'}", image_column="image", store=store)
    with pytest.raises(UserError, match="needs 'image_column'"):
        load_suite(f"hf:{tmp_path / 'ds'}", store=store)


# ----------------------------------------------------------------------------------------------------- methods


def test_method_items_cross_their_values_and_name_each_method():
    methods = parse_method("vl:alpha=0.3,0.5:blend=adain")
    assert [m.name for m in methods] == ["vl alpha=0.3 blend=adain", "vl alpha=0.5 blend=adain"]
    assert methods[1].settings == {"vl.alpha": 0.5, "vl.blend": "adain"}
    assert parse_method("img2img:strength=0.5")[0].settings == {"generation.strength": 0.5}
    assert parse_method("vl:vl.token_mode=image_only")[0].settings == {"vl.token_mode": "image_only"}
    with pytest.raises(UserError, match="'colour' is no vl"):
        parse_method("vl:colour=red")
    with pytest.raises(UserError, match="method kind"):
        parse_method("ipadapter")
    with pytest.raises(UserError, match="expected KIND:KEY=V1,V2"):
        parse_method("vl:alpha")


def test_methods_text_first_defaults_presets_and_refusals(tmp_path):
    assert [m.name for m in methods_of()] == ["text", "caption", "img2img strength=0.5", "vl"]
    given = methods_of(["caption", "text"], presets=["token"], img2img_strengths=[0.5, 0.7], adapter="a.st")
    names = [m.name for m in given]
    assert names[:2] == ["text", "caption"] and names.count("text") == 1
    assert "token token_mode=image_only" in names and "img2img strength=0.7" in names
    assert given[-1] == Method(name="adapter", kind="vl", settings={"vl.adapter": "a.st"}, baselines=PLAIN)
    assert len(preset_methods("vl_only_vs_qwen3")) == 3
    with pytest.raises(UserError, match="needs a steering direction"):
        preset_methods("steering")
    with pytest.raises(UserError, match="two methods named 'vl'"):
        methods_of(["vl", "vl"])
    with pytest.raises(UserError, match=r"sets vl.alpha: vl.\* settings act only"):
        methods_of(["caption:alpha=0.3"])
    with pytest.raises(UserError, match=r"sets generation\.seed"):
        methods_of(["vl:seed=3"])
    assert [m.name for m in methods_of(["vl:alpha=0.3"])][:2] == ["text", "caption"]  # the baselines, always
    steps = {m.name: m for m in methods_of(["vl:steps=4"])}  # its own text and caption at 4 steps (matched)
    assert steps["vl steps=4"].baselines == {"text": "text steps=4", "caption": "caption steps=4"}
    assert steps["text steps=4"].settings == steps["caption steps=4"].settings == {"generation.steps": 4}
    spec = tmp_path / "eval.toml"
    spec.write_text('[[method]]\nname = "strong"\nkind = "vl"\nsettings = {"vl.alpha" = 0.8}\n')
    assert methods_of(spec=spec)[2] == Method(name="strong", kind="vl", settings={"vl.alpha": 0.8}, baselines=PLAIN)
    spec.write_text('[[method]]\nname = "x"\nkind = "vl"\ncolour = 1\n')
    with pytest.raises(UserError, match=r"eval spec .*colour"):
        methods_of(spec=spec)


def test_omni_is_refused_without_omni_weights(tmp_path):
    with pytest.raises(UserError) as e:
        methods_of(["omni"])
    assert str(e.value) == OMNI_REFUSAL
    with pytest.raises(UserError, match="is not a diffusers pipeline folder"):
        methods_of(["omni"], omni=tmp_path)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"siglip_feat_dim": None}))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    with pytest.raises(UserError, match="not a ZImageOmniPipeline"):
        methods_of(["vl"], omni=tmp_path)
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"siglip_feat_dim": 32}))
    index = {"_class_name": "ZImageOmniPipeline", "siglip": ["transformers", "Siglip2VisionModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index | {"siglip_processor": ["transformers", "x"]}))
    with pytest.raises(UserError, match="not implemented yet"):  # found, but never claims a result it did not make
        methods_of(["omni"], omni=tmp_path)


def test_img2img_strength_that_skips_no_step_is_refused(zoo):
    cfg = tiny_config(zoo, **{"generation.steps": 2})
    check_strengths(cfg, parse_method("img2img:strength=0.5"))  # skips 1 of 2 steps
    with pytest.raises(UserError, match=r"strength 0\.9 at 2 steps skips no denoising step"):
        check_strengths(cfg, parse_method("img2img:strength=0.9"))
    check_strengths(cfg, parse_method("img2img:strength=0.2"))  # skips 1, runs 1 (diffusers: ceil(N * strength))


def test_each_method_on_each_cell_is_one_listed_run_and_text_runs_are_shared():
    suite = load_suite("builtin", references=2, prompts=2)
    methods = methods_of()
    captions = {r.hash: f"style of {r.name}" for r in suite.references}
    runs = expand(eval_spec(suite, methods, captions))
    # text runs of a (prompt, seed) are shared by both references: 4 cells x 4 methods - 2 shared text runs
    assert len(runs) == 14 == len({r.id for r in runs})
    cell = suite.cells()[0]
    by = {m.kind: method_run(m, cell, captions[cell.reference.hash]) for m in methods}
    assert by["text"].image is None and by["text"].init_image is None and by["text"].prompt == cell.prompt
    assert by["caption"].prompt == f"{cell.prompt}. style of {cell.reference.name}" and by["caption"].image is None
    assert by["img2img"].init_image == cell.reference.path and by["img2img"].image is None
    assert by["vl"].image == cell.reference.path and by["vl"].settings == {"generation.seed": 0}
    with pytest.raises(UserError, match="no caption"):
        method_run(methods[1], cell, None)


def test_run_eval_refuses_before_any_model_loads(zoo, tmp_path):
    cfg = tiny_config(zoo, **{"generation.steps": 2, "generation.width": 32, "generation.height": 32})
    suite = load_suite("builtin", references=1, prompts=2)
    with pytest.raises(UserError, match="at least two cells"):
        run_eval(cfg, load_suite("builtin", references=1, prompts=1), methods_of(["vl"]), tmp_path / "one")
    with pytest.raises(UserError, match="first method must be 'text'"):
        run_eval(cfg, suite, parse_method("vl"), tmp_path / "a")
    with pytest.raises(UserError, match="metric_models"):
        run_eval(cfg, suite, methods_of(["vl"]), tmp_path / "b", scoring=Scoring("clip"))
    with pytest.raises(UserError, match="hidden_layer"):  # the sweep's own checks: a layer beyond the model's depth
        run_eval(cfg, suite, methods_of(["vl:hidden_layer=-40"]), tmp_path / "c", scoring=Scoring("tiny"))
    assert not (tmp_path / "c" / "captions.json").exists() and not (tmp_path / "c" / RUNS).exists()


# ------------------------------------------------------------------------------------------- end to end (tiny)


@pytest.fixture(scope="module")
def quick_eval(tmp_path_factory, zoo):
    """`llm-dit eval --suite builtin --quick` on the tiny zoo with the tiny metric models (every method but omni)."""
    from llm_dit.cli.app import main

    out = tmp_path_factory.mktemp("eval") / "quick"
    argv = sys.argv
    sys.argv = ["llm-dit", "eval", "--suite", "builtin", "--quick", *TINY, "-o", str(out)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    assert e.value.code in (0, None)
    return out


def test_quick_eval_runs_every_method_on_every_cell(quick_eval):
    result = load_eval(quick_eval)
    data = result.data
    assert [m["name"] for m in data["methods"]] == ["text", "caption", "img2img strength=0.5", "vl"]
    assert data["suite"]["cells"] == 4 == len(data["cells"]) and len(data["runs"]) == 16
    assert all(r["status"] == "ok" and (quick_eval / r["image"]).is_file() for r in data["runs"])
    assert data["sweep"]["runs"] == data["sweep"]["completed"] == 14  # text runs shared by both references
    captions = data["captions"]["captions"]
    assert set(captions) == {r["hash"] for r in data["suite"]["references"]} and all(captions.values())
    for r in data["runs"]:
        cell = data["cells"][r["cell"]]
        expected = cell["prompt"] + (f". {captions[cell['reference']]}" if r["method"] == "caption" else "")
        assert r["prompt"] == expected
        assert ("dino_kept" in r["metrics"]) == (r["method"] != "text")  # content kept: against text's image
        assert {"clip_t", "csd", "clip_i", "dino_leak"} <= set(r["metrics"])
    assert data["primary"] == {"style": "csd", "adherence": "clip_t", "leak": "dino_leak", "style_fallback": None}
    assert data["models"]["vl"].endswith("qwen3-vl") and data["metrics"]["models"]["csd"]["source"]
    assert set(data["verdicts"]) == {"img2img strength=0.5", "vl"}
    assert set(data["timings"]) == {"captions", "sweep", "release", "scoring", "statistics", "report"}
    assert all(t >= 0 for t in data["timings"].values()) and data["timings"]["sweep"] > 0
    assert result.leaderboard.read_text().startswith("# Eval leaderboard: builtin")
    assert result.image("vl", data["cells"][0]).is_file()


def test_content_kept_is_measured_against_the_text_image_of_the_same_cell(quick_eval):
    data = load_eval(quick_eval).data
    runs = {(r["method"], r["cell"]): r for r in data["runs"]}
    scorer = MetricScorer("tiny")
    for cell in data["cells"]:
        vl, text = runs[("vl", cell["id"])], runs[("text", cell["id"])]
        ref = next(r["path"] for r in data["suite"]["references"] if r["hash"] == cell["reference"])
        [direct] = scorer.score([ScoreItem(quick_eval / vl["image"], cell["prompt"], ref, quick_eval / text["image"])])
        assert vl["metrics"]["dino_kept"] == pytest.approx(direct["dino_kept"], abs=1e-6)
        assert vl["metrics"]["clip_t"] == pytest.approx(direct["clip_t"], abs=1e-6)  # the cell's prompt


def test_statistics_pair_cells_and_the_verdict_follows_the_caption_differences(quick_eval):
    data = load_eval(quick_eval).data
    runs = {(r["method"], r["cell"]): r["metrics"] for r in data["runs"]}
    diffs = [runs[("vl", c["id"])]["csd"] - runs[("caption", c["id"])]["csd"] for c in data["cells"]]
    vs = data["stats"]["vl"]["vs_caption"]["csd"]
    assert vs["mean"] == pytest.approx(sum(diffs) / len(diffs)) and vs["n"] == 4 and vs["low"] <= vs["high"]
    cells = data["cells"]  # 2 references x 2 prompts: clustered by both, t with 1 degree of freedom
    low, high, g = clustered_ci(diffs, [c["reference"] for c in cells], [c["prompt"] for c in cells])
    assert (vs["low"], vs["high"], vs["clusters"]) == (pytest.approx(low), pytest.approx(high), g) and g == 2
    assert "cluster-robust" in data["settings"]["ci"]
    adherence = data["stats"]["vl"]["vs_caption"]["clip_t"]
    # the verdict, recomputed: one-sided clustered t p-values, Holm over the family, by hand
    family = data["settings"]["family"]
    assert family == ["img2img strength=0.5", "vl"]

    def p_of(metric: str) -> dict[str, float]:
        es = {m: data["stats"][m]["vs_caption"][metric] for m in family}
        return {m: float(student_t.sf(e["mean"] / e["se"], e["clusters"] - 1)) for m, e in es.items()}

    def holm_of(metric: str) -> dict[str, float]:
        (first, p1), (second, p2) = sorted(p_of(metric).items(), key=lambda kv: kv[1])
        return {first: min(1.0, 2 * p1), second: max(min(1.0, 2 * p1), p2)}

    style, leak = holm_of("csd"), p_of("dino_leak")  # the leak test guards the claim: not adjusted
    assert data["verdicts"]["vl"]["style_p_holm"] == pytest.approx(style["vl"])
    assert data["verdicts"]["vl"]["leak_p"] == pytest.approx(leak["vl"])
    tol = data["settings"]["tolerance"]
    better = style["vl"] <= 0.025 and adherence["low"] >= -tol and leak["vl"] > 0.025
    assert data["verdicts"]["vl"]["better"] == better and data["settings"]["alpha"] == 0.025
    assert "vs_text" not in data["stats"]["text"] and "vs_caption" not in data["stats"]["caption"]
    ranked = [r for r in data["leaderboard"] if "rank" in r]
    assert all(r["style_gain"]["low"] > 0 for r in ranked) and "text" not in {r["method"] for r in data["leaderboard"]}


def test_a_finished_eval_is_refused_without_resume_and_resumes_without_work(cli, quick_eval):
    args = ["eval", "--suite", "builtin", "--quick", *TINY, "-o", quick_eval]
    r = cli(*args)
    assert r.code == 2 and "already holds an eval" in r.err and "--resume" in r.err
    before = (quick_eval / "captions.json").stat().st_mtime_ns
    r = cli(*args, "--resume", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert Path(out["eval"]) == quick_eval / EVAL and set(out["verdicts"]) == {"img2img strength=0.5", "vl"}
    assert load_eval(quick_eval).data["sweep"]["ran_now"] == 0
    assert (quick_eval / "captions.json").stat().st_mtime_ns == before  # captions reused, not regenerated


def test_a_schema_1_eval_json_is_refused_and_resume_recomputes_it(cli, quick_eval, tmp_path):
    """A schema-1 eval.json (bootstrap intervals) is refused by `report` in one line that says what to do; doing
    it (the same eval with --resume) reruns nothing and writes a current file. A schema-2 file (verdicts without
    family-wise correction) is refused the same way."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(quick_eval, old)
    data = json.loads((old / EVAL).read_text())
    data["schema"] = "llm-dit eval 1"
    data["settings"] = {"tolerance": 0.01, "level": 0.95, "n_resamples": 9999, "seed": 0, "bootstrap": "BCa"}
    (old / EVAL).write_text(json.dumps(data))
    r = cli("report", old)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "--resume" in r.err and "earlier" in r.err
    r = cli("eval", "--suite", "builtin", "--quick", *TINY, "-o", old, "--resume")
    assert r.code == 0, r.err
    again = load_eval(old).data
    assert again["sweep"]["ran_now"] == 0 and "cluster-robust" in again["settings"]["ci"]
    data["schema"] = "llm-dit eval 2"
    (old / EVAL).write_text(json.dumps(data))
    r = cli("report", old)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "family-wise" in r.err and "--resume" in r.err


def test_a_dry_run_checks_everything_writes_nothing_and_plans_what_the_eval_runs(cli, quick_eval, tmp_path):
    out = tmp_path / "dry"
    r = cli("eval", "--suite", "builtin", "--quick", *TINY, "-o", out, "--dry-run", "--json")
    assert r.code == 0, r.err
    plan, ran = json.loads(r.out), load_eval(quick_eval).data
    assert plan["runs"] == ran["sweep"]["runs"] == 14 and plan["cells"] == 4 and plan["captions"] == 2
    # vl on 2 references x 2 prompts: 4 extractions; one noise probe per (size, prompt): 2 (the references share
    # a size); encodes: the 2 prompts, and each with each reference's caption: 6
    assert (plan["unique_extractions"], plan["probe_extractions"], plan["unique_encodes"]) == (4, 2, 6)
    assert plan["methods"] == [m["name"] for m in ran["methods"]]
    assert not out.exists()
    r = cli("eval", "--suite", "builtin", "--quick", *TINY, "--method", "vl:hidden_layer=-40", "--dry-run")
    assert r.code == 2 and "hidden_layer" in r.err and len(r.err.strip().splitlines()) == 1


def test_eval_refusals_are_one_line_exit_2(cli, zoo, tmp_path):
    r = cli("eval", "--suite", "builtin", "--quick", *TINY, "--method", "omni", "-o", tmp_path / "o")
    assert r.code == 2 and "in 'omni' (--omni); none are public" in r.err and "Traceback" not in r.err
    r = cli("eval", "--suite", "builtin", "--quick", *TINY, "--method", "img2img:strength=0.9", "-o", tmp_path / "s")
    assert r.code == 2 and "skips no denoising step" in r.err
    r = cli("eval", "--suite", tmp_path / "none", *TINY, "-o", tmp_path / "n")
    assert r.code == 2 and "'suite' (--suite)" in r.err
    r = cli("eval", "--suite", "builtin", "--references", "1", "--prompts", "1", *TINY, "-o", tmp_path / "one")
    assert r.code == 2 and "at least two cells" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists() and not (tmp_path / "one").exists()


def test_eval_resumes_after_sigkill_without_redoing_finished_runs(cli, zoo, tmp_path):
    out = tmp_path / "killed"
    args = ["eval", "--suite", "builtin", "--references", "1", "--prompts", "3"]
    args += [*TINY, "--method", "vl:alpha=0.3,0.6", "-o", str(out)]
    killed = subprocess.run([*signalling_cli("SIGKILL", "append_result", 2), *args], capture_output=True, check=False)
    assert killed.returncode == -9
    done = {r.id: r.output for r in SweepDir(out / RUNS).lines()}
    assert len(done) == 2 and not (out / EVAL).exists()  # killed mid-sweep, before scoring
    stamps = {i: (out / RUNS / p).stat().st_mtime_ns for i, p in done.items()}
    finished = cli(*args, "--resume")  # in this process: only the killed half needs a process of its own
    assert finished.code == 0, finished.err
    lines = SweepDir(out / RUNS).lines()
    assert len(lines) == len({r.id for r in lines}) == 12  # 3 cells x (text, caption, 2 vl): nothing run twice
    assert {i: (out / RUNS / p).stat().st_mtime_ns for i, p in done.items()} == stamps  # not written again
    data = load_eval(out).data
    assert data["sweep"]["ran_now"] == 12 - len(done) and all(r["status"] == "ok" for r in data["runs"])
    assert finished.out.split() == [str(out / EVAL), str(out / "leaderboard.md"), str(out / "report.html")]


def test_style_captions_are_words_even_from_a_random_model(zoo):
    from llm_dit.core.files import load_image
    from llm_dit.generation.components import Components
    from llm_dit.models.vl import STYLE_CAPTION_PROMPT, blank_token_ids, caption_image

    extractor = Components(tiny_config(zoo)).vl
    blank = set(blank_token_ids(extractor.tokenizer))
    newline = extractor.tokenizer.convert_tokens_to_ids("Ċ")  # byte-level BPE's "\n"
    assert newline in blank and not blank & set(extractor.tokenizer.all_special_ids)
    for path in builtin_references():
        text = caption_image(extractor, load_image(path), STYLE_CAPTION_PROMPT, 8, words_only=True)
        assert text.strip() and text.isprintable(), (path.name, text)


def test_a_steering_method_with_model_free_metrics_only(zoo, tmp_path):
    import torch

    from llm_dit.maths.steer import save_direction

    direction = save_direction(
        tmp_path / "d.safetensors", torch.randn(64, generator=torch.Generator().manual_seed(0)), {}
    )
    cfg = tiny_config(zoo, **{"generation.steps": 2, "generation.width": 32, "generation.height": 32})
    suite = load_suite("builtin", references=1, prompts=2)
    result = run_eval(cfg, suite, methods_of(steer=str(direction)), tmp_path / "e", scoring=Scoring(None))
    data = result.data
    steer = next(r for r in data["runs"] if r["method"] == "steer")
    assert steer["status"] == "ok" and "dino_kept" not in steer["metrics"] and "ssim_to_baseline" in steer["metrics"]
    record = next(r for r in SweepDir(tmp_path / "e" / RUNS).runs() if r.label == "steer")
    assert record.steer == str(direction) and record.image is None
    assert data["primary"]["style"] == "color_hist_similarity" and data["primary"]["adherence"] is None
    assert data["primary"]["style_fallback"].startswith("color_hist_similarity is a fallback style metric (colour")
    # one reference: means, no verdict and no rank (comparison.single_level_factor)
    assert data["verdicts"]["steer"]["reason"] == f"no verdict: {single_level_factor(1, 2)}"
    assert data["leaderboard"][0]["status"] == "not ranked: the suite has 1 reference"


def test_eval_with_failed_runs_writes_its_results_and_exits_3(cli, zoo, tmp_path, monkeypatch):
    """Like sweep: a run that fails does not stop the eval (eval.json, leaderboard and report are written), and the
    command exits 3 (`cli.RUNS_FAILED`) saying how many failed and that --resume retries them."""
    from llm_dit.sweep import runner

    real = runner.render_batch

    def render_batch(gen, prepared):
        if prepared[0].config.vl.alpha == 0.7:
            raise RuntimeError("simulated render failure")
        return real(gen, prepared)

    monkeypatch.setattr(runner, "render_batch", render_batch)
    out = tmp_path / "failed"
    r = cli("eval", "--suite", "builtin", "--references", "1", "--prompts", "2", *TINY, "--method",
            "vl:alpha=0.3,0.7", "-o", out)  # fmt: skip
    assert r.code == 3, r.err
    assert "2 of 8 runs failed" in r.err and "--resume" in r.err
    data = load_eval(out).data
    assert [x["status"] for x in data["runs"] if x["method"] == "vl alpha=0.7"] == ["failed", "failed"]
    assert (out / "leaderboard.md").is_file()


def test_an_eval_with_captions_loads_the_vl_model_once(zoo, tmp_path, monkeypatch):
    """The captioning VL model is the one the sweep extracts with: one Qwen3-VL load for captions and every vl run
    (the text encoder and the pipeline each load once too)."""
    import llm_dit.models.text
    import llm_dit.models.vl
    from llm_dit.core.cache import TensorCache

    loads: list[str] = []
    for module in (llm_dit.models.vl, llm_dit.models.text):
        real = module.load_model

        def counted(model_class, *args, _real=real, **kwargs):
            loads.append(model_class.__name__)
            return _real(model_class, *args, **kwargs)

        monkeypatch.setattr(module, "load_model", counted)
    cfg = tiny_config(zoo, **{"generation.steps": 2, "generation.width": 32, "generation.height": 32})
    suite = load_suite("builtin", references=2, prompts=1)
    cache = TensorCache(tmp_path / "cache")  # empty: every forward pass runs
    result = run_eval(
        cfg, suite, methods_of(["vl"]), tmp_path / "e", scoring=Scoring(None), session=Session(cache=cache)
    )
    assert result.data["captions"]["captions"] and result.data["sweep"]["completed"] == 5
    assert loads.count("Qwen3VLForConditionalGeneration") == 1 and loads.count("AutoModel") == 1


def test_the_generation_models_are_released_before_the_metric_models_score(zoo, tmp_path, monkeypatch):
    """The eval's shared components hold the DiT and the encoders after the sweep; they are released before the
    metric models load, so on one GPU the two never share its memory."""
    import llm_dit.eval.run as evaluate
    from llm_dit.generation.components import Components

    events: list[tuple] = []
    release, score = Components.release, evaluate.score_runs
    monkeypatch.setattr(Components, "release", lambda self, *n: events.append(("release", n)) or release(self, *n))
    monkeypatch.setattr(evaluate, "score_runs", lambda *a, **k: events.append(("score",)) or score(*a, **k))
    cfg = tiny_config(zoo, **{"generation.steps": 2, "generation.width": 32, "generation.height": 32})
    run_eval(cfg, load_suite("builtin", references=1, prompts=2), methods_of(["vl"]), tmp_path / "e",
             scoring=Scoring("tiny"))  # fmt: skip
    last_release = max(i for i, e in enumerate(events) if e[0] == "release")
    assert events.index(("score",)) > last_release and "pipeline" in events[last_release][1]
