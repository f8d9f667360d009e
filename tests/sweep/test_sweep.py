import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from llm_dit.report.sweep_report import grid_layout
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.spec import PRESETS, SweepSpec, expand, resolve_spec

from ..conftest import REPO, signalling_cli

REF = REPO / "examples" / "reference-images" / "test_scene.png"
TINY = ["--models", "tiny", "--width", "32", "--height", "32", "--steps", "2"]


def results(d):
    return SweepDir(d).lines()


def test_list_presets_names_every_preset_with_counts(cli):
    r = cli("sweep", "-o", "unused", "--list-presets")
    assert r.code == 0
    lines = r.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert all("runs" in line and line.split()[1].isdigit() for line in lines)
    counts = {line.split()[0]: int(line.split()[1]) for line in lines}
    assert counts["vl_only_vs_qwen3"] == 4 and counts["outlier"] == 6 and counts["blend_all"] == 11


def test_baseline_appears_once_per_prompt_and_is_shared_by_its_images():
    spec = resolve_spec(SweepSpec(prompts=["a", "b"], images=["x.png", "y.png"]), "alpha", {}, {})
    runs = expand(spec)
    baselines = [r for r in runs if r.kind == "baseline"]
    # text-only: the reference image plays no part, so both images' variants share one baseline per prompt
    assert len(baselines) == 2 and {(r.prompt, r.image) for r in baselines} == {("a", None), ("b", None)}
    assert len(runs) == 2 + 4 * len(PRESETS["alpha"]["axes"]["vl.alpha"])
    by_id = {r.id: r for r in runs}
    assert all(by_id[r.baseline].prompt == r.prompt for r in runs if r.kind == "variant")
    no_base = resolve_spec(SweepSpec(prompts=["a"], images=["x.png"], baseline=False), "alpha", {}, {})
    assert all(r.kind == "variant" for r in expand(no_base))
    think = expand(resolve_spec(SweepSpec(prompts=["a"], images=["x.png"]), "think_comparison", {}, {}))
    assert sorted(r.settings.get("encoder.think_block") for r in think if r.kind == "variant") == [False, True]


def test_vl_only_vs_qwen3_writes_results_grid_report_and_summary(cli, zoo, tmp_path):
    out = tmp_path / "s"
    r = cli("sweep", "--preset", "vl_only_vs_qwen3", "-i", REF, "-p", "a house", *TINY, "-o", out)
    assert r.code == 0, r.err
    rows = results(out)
    assert len(rows) == 4 and all(x.status == "ok" for x in rows)
    assert [x.kind for x in rows].count("baseline") == 1
    for x in rows:
        assert (out / x.output).is_file()
        assert x.record["settings"]["generation.width"] == 32
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert (out / "grid.png").is_file()
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["runs"] == summary["completed"] == 4 and summary["failed"] == 0
    by_label = {x.label: x for x in rows}
    assert by_label["vl_text_tokens"].record["conditioning"]["vl"]["-6"]["token_mode"] == "text_only"
    assert by_label["vl_full_sequence"].record["settings"]["vl.alpha"] == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {x.id for x in rows}
    assert all("ssim_to_baseline" in metrics[x.id] for x in rows if x.kind == "variant")


def test_three_layers_two_alphas_cost_one_forward_pass_each_and_zero_on_rerun(cli, zoo, tmp_path):
    args = ["--layers", "-2,-4,-6", "--alphas", "0.3,0.6", "-i", REF, "-p", "a lighthouse", *TINY]
    plan = cli("sweep", *args, "-o", tmp_path / "x", "--dry-run", "--json")
    assert plan.code == 0, plan.err
    work = json.loads(plan.out)
    assert work["runs"] == 7 and len(work["unique_extractions"]) == 1 and len(work["unique_encodes"]) == 1
    assert work["unique_extractions"][0]["layers"] == [-6, -4, -2]
    assert len(work["probe_extractions"]) == 1 and work["probe_extractions"][0]["layers"] == [-6, -4, -2]
    assert cli("sweep", *args, "-o", tmp_path / "a").code == 0
    first = json.loads((tmp_path / "a" / "sweep.json").read_text())
    # one VL pass for the reference and one for the image-check probe, all three layers each
    assert (first["vl_forward_passes"], first["text_forward_passes"], first["completed"]) == (2, 1, 7)
    assert cli("sweep", *args, "-o", tmp_path / "b").code == 0
    again = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert (again["vl_forward_passes"], again["text_forward_passes"], again["completed"]) == (0, 0, 7)


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(cli, zoo, tmp_path, monkeypatch):
    """A run that fails at render time (settings and inputs are checked before any work: test_sweep_checks.py)."""
    from llm_dit.sweep import runner

    real = runner.render_batch

    def render_batch(gen, prepared):
        if prepared[0].config.vl.blend == "slerp":
            raise RuntimeError("k: simulated render failure")
        return real(gen, prepared)

    monkeypatch.setattr(runner, "render_batch", render_batch)
    out = tmp_path / "f"
    r = cli("sweep", "--blend-modes", "interpolate,slerp", "--alpha", "0.3", "-i", REF, "-p", "a", *TINY, "-o", out)
    assert r.code == 3, r.err
    rows = results(out)
    assert [x.status for x in rows].count("failed") == 1 and [x.status for x in rows].count("ok") == 2
    assert all("k" in x.error for x in rows if x.status == "failed")
    assert json.loads((out / "sweep.json").read_text())["failed"] == 1
    assert cli("report", out).code == 0


def test_existing_directory_needs_resume_and_a_second_sweep_is_locked_out(cli, zoo, tmp_path):
    out = tmp_path / "r"
    args = ["--alphas", "0.5", "-i", REF, "-p", "a tree", *TINY, "-o", out]
    assert cli("sweep", *args).code == 0
    r = cli("sweep", *args)
    assert r.code == 2 and "finish it with 'resume'" in r.err
    r = cli("sweep", *args, "--resume")
    assert r.code == 0 and len(results(out)) == 2
    import fcntl

    fd = os.open(out / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = cli("sweep", *args, "--resume")
        assert r.code == 2 and "another sweep" in r.err
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "method, count", [("write_spec", 1), ("append_result", 1), ("append_result", 3)],
    ids=["while_priming", "after_first", "after_third"],
)  # fmt: skip
def test_sigkill_then_resume_runs_everything_exactly_once(cli, zoo, tmp_path, method, count):
    out = tmp_path / "k"
    args = ["sweep", "--alphas", "0.1,0.2,0.3,0.4,0.5", "-i", str(REF), "-p", "a mill", *TINY, "-o", str(out)]
    killed = subprocess.run([*signalling_cli("SIGKILL", method, count), *args], capture_output=True, check=False)
    assert killed.returncode == -9
    assert len(results(out)) == (0 if method == "write_spec" else count)  # killed mid-sweep
    done = cli(*args, "--resume")  # in this process: only the killed half needs a process of its own
    assert done.code == 0, done.err
    rows = results(out)
    ids = [x.id for x in rows]
    assert len(ids) == len(set(ids)) == 6
    assert all((out / x.output).is_file() and x.status == "ok" for x in rows)
    assert len(list((out / "images").glob("*.png"))) == 6 and not list(out.rglob("*.tmp"))


def test_outlier_preset_grid_has_every_masking_mode_in_its_own_cell(cli, zoo, tmp_path):
    out = tmp_path / "o"
    assert cli("sweep", "--preset", "outlier", "-i", REF, "-p", "a house", *TINY, "-o", out).code == 0
    rows = results(out)
    modes = {x.settings["vl.outlier_masking"] for x in rows if x.kind == "variant"}
    assert modes == {"none", "zero", "clamp", "scale", "reference"}
    layout = grid_layout(rows)
    cells = [c.run_id for block in layout.blocks for row in block.cells for c in row if c and c.kind == "variant"]
    assert sorted(cells) == sorted(x.id for x in rows if x.kind == "variant")  # 5 runs, 5 distinct cells


def test_batched_generation_matches_one_at_a_time(cli, zoo, tmp_path):
    args = ["--alphas", "0.2,0.4,0.6", "-i", REF, "-p", "a bridge", *TINY]
    assert cli("sweep", *args, "-o", tmp_path / "one").code == 0
    assert cli("sweep", *args, "--batch-size", "4", "-o", tmp_path / "four").code == 0
    one, four = results(tmp_path / "one"), results(tmp_path / "four")
    assert max(x.record["conditioning"]["batch_size"] for x in four) == 4
    for a in one:
        b = next(x for x in four if x.id == a.id)
        pa = np.asarray(Image.open(tmp_path / "one" / a.output)).astype(int)
        pb = np.asarray(Image.open(tmp_path / "four" / b.output)).astype(int)
        assert np.abs(pa - pb).max() <= 2


def test_model_metrics_join_the_sweep_metrics(cli, zoo, tmp_path):
    out = tmp_path / "c"
    args = ["--alphas", "0.3", "-i", REF, "-p", "a barn", *TINY, "--metric-models", "tiny,siglip=none", "-o", out]
    assert cli("sweep", *args).code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for row in results(out):  # the text-only baseline has no reference image and no baseline to compare with
        values = metrics[row.id]
        assert -1 <= values["clip_t"] <= 1 and "siglip_t" not in values
        variant = row.kind == "variant"
        for name in ("clip_i", "csd", "dino_leak", "dino_kept"):
            assert (name in values) == variant, name
            assert not variant or -1 <= values[name] <= 1
    assert "clip_t" in (out / "report.html").read_text()
    r = cli("metrics", out, "--metric-models", f"clip={tmp_path / 'missing'}")
    assert r.code == 2 and "missing" in r.err


def test_resume_repairs_a_torn_line_and_stale_temp_files(cli, zoo, tmp_path):
    out = tmp_path / "t"
    args = ["--alphas", "0.3,0.6", "-i", REF, "-p", "a dam", *TINY, "-o", out]
    assert cli("sweep", *args).code == 0
    lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    (out / "results.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # the last line torn mid-write
    (out / "images" / ".x.png.123.tmp").write_bytes(b"half an image")
    assert cli("sweep", *args, "--resume").code == 0
    rows = results(out)
    assert len(rows) == len({x.id for x in rows}) == 3
    assert (out / "results.jsonl").read_bytes().endswith(b"\n") and not list(out.rglob("*.tmp"))
