"""A sweep checks everything before any work starts (issue 17): every input file and every run's settings before
the first model loads (`--dry-run` too), failed runs make the command fail and `--resume` retries them, and a
directory is never resumed with another plan.

End-to-end runs use the tiny zoo at 32x32 px and 2 steps."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest

from llm_dit.adapter.model import Adapter
from llm_dit.sweep.dir import SweepDir

from ..conftest import REPO, signalling_cli

REF = REPO / "examples" / "reference-images" / "test_scene.png"
OTHER = REPO / "examples" / "reference-images" / "sunset.png"
TINY = ["--models", "tiny", "--width", "32", "--height", "32", "--steps", "2"]


def _bad_file(tmp_path, name: str, data: bytes = b"not what it should be"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-image", "reference image not found"),
        ("alpha-out-of-range", "alpha must be in [0, 1]"),
        ("schedule-out-of-range", "alpha must be in [0, 1]"),
        ("blend-option", "unknown option(s) k for blend mode"),
        ("missing-init-image", "init image not found"),
        ("bad-neutral-image", "is not an image file"),
        ("missing-steer", "not found"),
        ("bad-adapter", "adapter file"),
        ("adapter-width", "has width 32, the DiT caption width is 64"),
        ("missing-reference-stats", "reference stats file not found"),
        ("missing-lora", "LoRA file not found"),  # found by the docs harness: each run failed, exit 3
    ],
)
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_sweep_refuses_a_bad_input_or_setting_before_any_model_loads(
    cli, zoo, tmp_path, monkeypatch, case, message, dry
):
    """Each case passed planning before (the dry run exited 0; the real run recorded failed runs and exited 0 or
    aborted late): now one line naming the run, exit 2, no model loaded and nothing written."""
    image = ["-i", REF]
    args = {
        "missing-image": ["-i", tmp_path / "nothere.png", "--alphas", "0.3"],
        "alpha-out-of-range": [*image, "--alphas", "0.3,5"],
        "schedule-out-of-range": [*image, "--alpha-schedule", "linear:0.2,3"],
        "blend-option": [*image, "--blend-modes", "interpolate,slerp", "--blend-option", "k=3"],
        "missing-init-image": [*image, "--alphas", "0.3", "--init-image", tmp_path / "nothere.png"],
        "bad-neutral-image": [*image, "--blend", "style_delta", "--neutral-image", _bad_file(tmp_path, "n.png")],
        "missing-steer": ["--steer", tmp_path / "nothere.safetensors", "--alphas", "0.5,1"],
        "bad-adapter": [*image, "--alphas", "0.3", "--adapter", _bad_file(tmp_path, "a.safetensors")],
        "adapter-width": [*image, "--alphas", "0.3", "--adapter", Adapter(32, "affine").save(tmp_path / "w.st")],
        "missing-lora": [*image, "--alphas", "0.3", "--lora-sets", f"none;{tmp_path / 'nothere.safetensors'}:0.5"],
        "missing-reference-stats": [
            *image,
            "--alphas",
            "0.3",
            "--normalize",
            "global",
            "--reference-stats",
            tmp_path / "nothere.safetensors",
        ],
    }[case]
    from llm_dit.generation import components

    def no_models(*_args, **_kw):
        raise AssertionError("a model loaded before the sweep's inputs and settings were checked")

    monkeypatch.setattr(components.Components, "__init__", no_models)
    out = tmp_path / "out"
    r = cli("sweep", *args, "-p", "a", *TINY, *(["--dry-run"] if dry else ["-o", out]))
    assert r.code == 2, (r.code, r.out, r.err)
    assert len(r.err.strip().splitlines()) == 1 and "sweep run '" in r.err and message in r.err, r.err
    assert not out.exists()


def test_each_input_image_is_decoded_once_per_sweep(cli, zoo, tmp_path, monkeypatch):
    """Checking the inputs, planning the image-check probes, running and scoring share one decoded image (before:
    the plan, the runner and the scoring each decoded it)."""
    from llm_dit.sweep import spec as sweep

    decoded: list[str] = []
    real = sweep.load_image

    def counting(path, label):
        decoded.append(str(path))
        return real(path, label)

    monkeypatch.setattr(sweep, "load_image", counting)
    args = ["--alphas", "0.3,0.6", "-i", REF, "--init-image", OTHER, "--strength", "0.5", "-p", "a", *TINY]
    r = cli("sweep", *args, "-o", tmp_path / "d")
    assert r.code == 0, r.err
    assert sorted(decoded) == sorted([str(REF), str(OTHER)])


@pytest.fixture
def flaky(monkeypatch):
    """Make the run labelled `alpha=0.6` fail once, as a run can at render time (out of memory, a library error)."""
    from llm_dit.sweep import runner

    real, failed = runner.prepare_run, []

    def prepare_run(gen, checked):
        if checked.run.label == "alpha=0.6" and not failed:
            failed.append(checked.run.id)
            raise RuntimeError("simulated failure")
        return real(gen, checked)

    monkeypatch.setattr(runner, "prepare_run", prepare_run)
    return failed


def test_failed_runs_fail_the_command_and_resume_retries_them(cli, zoo, tmp_path, flaky):
    """Before: exit 0 with failed runs, and `--resume` treated a failed run as done."""
    out = tmp_path / "f"
    args = ["--alphas", "0.3,0.6", "-i", REF, "-p", "a boat", *TINY, "-o", out]
    r = cli("sweep", *args)
    assert r.code == 3, r.err
    assert "1 of 3 runs failed" in r.err and "--resume" in r.err
    runs = SweepDir(out).runs()
    assert [x.status for x in runs].count("failed") == 1 and (out / "report.html").is_file()
    assert "simulated failure" in next(x.error for x in runs if x.status == "failed")
    r = cli("sweep", *args, "--resume")
    assert r.code == 0, r.err
    runs = SweepDir(out).runs()
    assert len(runs) == 3 and all(x.status == "ok" for x in runs)
    assert all((out / x.output).is_file() for x in runs)


def test_resuming_with_a_different_plan_is_refused_naming_the_difference(cli, zoo, tmp_path):
    """Before: the second sweep ran its new runs into the old directory (a mixed grid, more completed than
    planned)."""
    out = tmp_path / "p"
    base = ["-i", REF, "-p", "a tree", *TINY, "-o", out]
    assert cli("sweep", "--alphas", "0.3,0.6", *base).code == 0
    before = (out / "results.jsonl").read_bytes()
    r = cli("sweep", "--alphas", "0.3,0.9", *base, "--resume")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"runs differ: 3 planned now, 3 in {out} (vl.alpha 0.9 now, 0.6 there)" in r.err
    assert "new: 'alpha=0.9'" in r.err and "gone: 'alpha=0.6'" in r.err
    r = cli("sweep", "-i", OTHER, "--alphas", "0.3,0.6", *base[2:], "--resume")
    assert r.code == 2 and f'(image "{OTHER}" now, "{REF}" there)' in r.err, r.err
    assert (out / "results.jsonl").read_bytes() == before
    assert cli("sweep", "--alphas", "0.3,0.6", *base, "--resume").code == 0  # the same plan resumes


def test_spec_file_paths_resolve_against_the_spec_files_folder(cli, zoo, tmp_path, monkeypatch):
    """Before: a spec's image (and every other input) path was read from the current directory, so a spec beside
    its images only worked when run from its own folder."""

    from llm_dit.sweep.spec import SweepSpec

    folder = tmp_path / "study"
    (folder / "refs").mkdir(parents=True)
    shutil.copy(REF, folder / "refs" / "ref.png")
    shutil.copy(OTHER, folder / "refs" / "init.png")
    stats = REPO / "src" / "llm_dit" / "data" / "qwen3-4b_layer-2_stats.safetensors"
    shutil.copy(stats, folder / "stats.safetensors")
    (folder / "spec.toml").write_text(
        'prompts = ["a house"]\nimages = ["refs/ref.png"]\ninit_image = "refs/init.png"\n'
        '[fixed]\n"vl.normalize" = "global"\n"vl.reference_stats" = "stats.safetensors"\n'
        '[axes]\n"vl.alpha" = [0.3, 0.6]\n'
    )
    monkeypatch.chdir(tmp_path)
    r = cli("sweep", "--spec", folder / "spec.toml", *TINY, "--dry-run", "--json")
    assert r.code == 0, r.err
    variants = [x for x in json.loads(r.out)["run_list"] if x["kind"] == "variant"]
    assert {x["image"] for x in variants} == {str(folder / "refs" / "ref.png")}
    assert {x["init_image"] for x in variants} == {str(folder / "refs" / "init.png")}
    assert {x["settings"]["vl.reference_stats"] for x in variants} == {str(folder / "stats.safetensors")}
    # every input field and path setting; absolute paths and unset values are kept
    spec = SweepSpec(
        images=["a.png", "/abs/b.png"],
        steer="d.safetensors",
        neutral_image="n.png",
        axes={"vl.adapter": ["x.safetensors", None], "vl.alpha": [0.3]},
        variants=[{"vl.reference_stats": "s.safetensors", "label": "v"}],
    ).relative_to(folder)
    assert spec.images == [str(folder / "a.png"), "/abs/b.png"] and spec.init_image is None
    assert (spec.steer, spec.neutral_image) == (str(folder / "d.safetensors"), str(folder / "n.png"))
    assert spec.axes == {"vl.adapter": [str(folder / "x.safetensors"), None], "vl.alpha": [0.3]}
    assert spec.variants == [{"vl.reference_stats": str(folder / "s.safetensors"), "label": "v"}]


def test_sigint_says_what_was_saved_and_how_to_resume(cli, zoo, tmp_path):
    """A real SIGINT to a sweep in a subprocess, mid-sweep (after its first result): before, it exited 130
    silently."""
    out = tmp_path / "i"
    alphas = "0.1,0.2,0.3,0.4,0.5"  # 5 variants + 1 baseline; the signal lands after the first result is saved
    args = ["sweep", "--alphas", alphas, "-i", str(REF), "-p", "a mill", *TINY, "-o", str(out)]
    cmd = [*signalling_cli("SIGINT", "append_result", 1), *args]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 130, err
    done = sum(x.status == "ok" for x in SweepDir(out).runs())
    assert done == 1  # interrupted mid-sweep, right after its first result
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and f"interrupted: {done} of 6 runs saved in {out}; resume with: " in lines[0], err
    resume = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert resume[0] == "llm-dit" and resume[1:] == [*args, "--resume"]
    finished = cli(*resume[1:])  # the command it printed, run in this process
    assert finished.code == 0, finished.err
    assert len(SweepDir(out).runs()) == 6 and all(x.status == "ok" for x in SweepDir(out).runs())


def test_a_metric_device_this_machine_lacks_is_refused_before_the_sweep_runs(cli, zoo, tmp_path, monkeypatch):
    """Found by the docs harness: `--metric-device cuda` without CUDA ran the whole sweep, then died in scoring with
    a traceback. Now one line naming metric_device, exit 2, nothing written, no model loaded."""
    import torch

    from llm_dit.generation import components

    def no_models(*_args, **_kw):
        raise AssertionError("a model loaded before the metric device was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(components.Components, "__init__", no_models)
    out = tmp_path / "out"
    r = cli("sweep", "-i", REF, "--alphas", "0.3", "-p", "a", *TINY, "--metric-device", "cuda", "-o", out)
    assert r.code == 2 and r.err.strip() == "error: metric_device: device 'cuda' requested but CUDA is not available"
    assert not out.exists()
    r = cli("sweep", "-i", REF, "--alphas", "0.3", "-p", "a", *TINY, "--profile", "rtx4090", "-o", out)
    assert r.code == 2 and "device 'cuda' requested but CUDA is not available" in r.err  # the models' device too
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_listed_run_with_vl_settings_and_no_image_is_refused(cli, zoo, tmp_path, dry):
    """Before: a spec's `[[runs]]` entry could set `vl.*` with no reference image and was accepted; the settings
    could not act (nothing to blend), yet the record listed them as the run's."""
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'prompts = ["a boat"]\n\n[[runs]]\nprompt = "a house"\nlabel = "plain"\n\n'
        '[[runs]]\nprompt = "a house"\nlabel = "warm"\nsettings = {"vl.alpha" = 0.3, "generation.steps" = 2}\n'
    )
    out = tmp_path / "out"
    r = cli("sweep", "--spec", spec, *TINY, *(["--dry-run"] if dry else ["-o", out]))
    assert r.code == 2, (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    assert "run 'warm' sets vl.alpha" in r.err and "reference image" in r.err, r.err
    assert not out.exists()
    # with an image (or a steering direction) the same settings act, and are accepted
    spec.write_text(
        f'prompts = ["a boat"]\n\n[[runs]]\nprompt = "a house"\nimage = "{REF}"\nlabel = "warm"\n'
        'settings = {"vl.alpha" = 0.3}\n'
    )
    assert cli("sweep", "--spec", spec, *TINY, "--dry-run").code == 0
