"""A DiT or VAE that produces NaN/Inf fails the run naming the stage (issue 22, item 2): before, the image was
written all black with status ok, and sweeps and evals scored it.

The checkpoints are the tiny zoo's Z-Image folder copied with one weight tensor set to NaN."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_dit.sweep.dir import SweepDir

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = ["--steps", "2", "--width", "32", "--height", "32"]
DIT_WEIGHT = ("transformer", "all_final_layer.2-1.linear.weight")
VAE_WEIGHT = ("vae", "decoder.conv_out.weight")


def poisoned(zoo: Path, tmp_path: Path, where: tuple[str, str]) -> Path:
    """A copy of the tiny Z-Image folder whose tensor `where` = (subfolder, key) is all NaN."""
    folder = tmp_path / f"zimage-nan-{where[0]}"
    shutil.copytree(zoo / "zimage", folder)
    file = folder / where[0] / "diffusion_pytorch_model.safetensors"
    weights = load_file(file)
    weights[where[1]].fill_(float("nan"))
    save_file(weights, file, metadata={"format": "pt"})
    return folder


def models(zoo: Path, zimage: Path) -> list:
    return ["--zimage", zimage, "--vl", zoo / "qwen3-vl"]


def one_line(r) -> str:
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    return lines[0]


def test_a_dit_with_nan_weights_fails_generate_naming_the_stage(cli, zoo, tmp_path):
    out = tmp_path / "x.png"
    r = cli("generate", *models(zoo, poisoned(zoo, tmp_path, DIT_WEIGHT)), "-p", "a fox", *SIZE, "-o", out)
    assert r.code == 2, (r.code, r.err)
    line = one_line(r)
    assert line.startswith("error: generation: the DiT produced non-finite latents (NaN/Inf) at step 1 of 2"), line
    assert "generation.dtype" in line
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not list(tmp_path.glob(".x.png.*"))


def test_a_vae_with_nan_weights_fails_generate_naming_the_stage(cli, zoo, tmp_path):
    out = tmp_path / "x.png"
    r = cli("generate", *models(zoo, poisoned(zoo, tmp_path, VAE_WEIGHT)), "-p", "a fox", *SIZE, "-o", out)
    assert r.code == 2, (r.code, r.err)
    line = one_line(r)
    assert line.startswith("error: generation: the VAE decoded non-finite pixels (NaN/Inf)"), line
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_sweep_records_a_non_finite_run_as_failed(cli, zoo, tmp_path):
    out = tmp_path / "s"
    broken = poisoned(zoo, tmp_path, DIT_WEIGHT)
    r = cli("sweep", *models(zoo, broken), "-p", "a fox", "--seeds", "0,1", "--batch-size", "2", *SIZE, "-o", out)
    assert r.code == 3, (r.code, r.err)
    runs = SweepDir(out).runs()
    assert len(runs) == 2 and all(x.status == "failed" for x in runs), runs
    assert all("the DiT produced non-finite latents" in x.error for x in runs)
    assert all(x.output is None for x in runs) and not list((out / SweepDir.IMAGES).glob("*.png"))


def test_only_the_run_that_goes_non_finite_fails_in_a_shared_call(cli, zoo, tmp_path, monkeypatch):
    """Runs that share one diffusers call (`--batch-size`): the one whose DiT output is NaN fails, the other is
    rendered alone and recorded ok, with the image it gets on its own."""
    from diffusers import ZImageTransformer2DModel

    real = ZImageTransformer2DModel.forward

    def forward(self, x, t, cap_feats, *args, **kwargs):
        out = real(self, x, t, cap_feats, *args, **kwargs)
        for i, rows in enumerate(cap_feats):
            if rows.shape[0] > 20:  # the long prompt's caption rows
                out[0][i] = torch.full_like(out[0][i], float("nan"))
        return out

    monkeypatch.setattr(ZImageTransformer2DModel, "forward", forward)
    long = "a lighthouse on a rocky cliff above a stormy sea at night, with waves and rain and lightning in the sky"
    out = tmp_path / "s"
    r = cli("sweep", "--models", "tiny", "-p", "a fox", "-p", long, "--batch-size", "2", *SIZE, "-o", out)
    assert r.code == 3, (r.code, r.err)
    runs = {x.prompt: x for x in SweepDir(out).runs()}
    assert runs["a fox"].status == "ok" and (out / runs["a fox"].output).is_file()
    assert runs[long].status == "failed" and "non-finite latents" in runs[long].error
    alone = tmp_path / "alone.png"
    assert cli("generate", "--models", "tiny", "-p", "a fox", *SIZE, "-o", alone).code == 0
    assert (out / runs["a fox"].output).read_bytes() == alone.read_bytes()
