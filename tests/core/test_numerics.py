"""Numbers that poison a run: NaN/Inf rows stop the run at the stage that made them, whatever the settings, and
`whiten` refuses a singular VL covariance (llm_dit.core.numerics, blend.whiten)."""

import math
import re
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from llm_dit.adapter.model import Adapter
from llm_dit.config.settings import load_config
from llm_dit.core.errors import UserError, check_choice
from llm_dit.core.numerics import NonFiniteError, check_number, check_rows, require_finite
from llm_dit.generation.generate import Generator
from llm_dit.maths.blend import BlendError, _shrunk_cov, _sym_pow, blend, whiten

from ..conftest import REPO

REF = REPO / "examples" / "reference-images" / "purple_hexagon.png"
BAD = {"nan": float("nan"), "inf": float("inf")}  # a broken weight, or an overflow (as fp16 gives)


def rgb(path):
    return Image.open(path).convert("RGB")


def test_require_finite_names_the_stage_and_counts():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -float("inf")]])
    with pytest.raises(NonFiniteError, match=r"^VL extraction layer -6: 1 NaN and 2 Inf values in \(2, 2\) rows; h$"):
        require_finite(x, "VL extraction layer -6", "h")
    y = torch.ones(2, 2)
    assert require_finite(y, "x") is y


def test_check_rows_names_the_label_and_what_is_wrong():
    rows = torch.ones(3, 4)
    assert check_rows(rows, "x", width=4) is rows
    cases = [
        ([[1.0]], UserError, r"^x must be a torch.Tensor, got list$"),
        (torch.ones(2, 3, 4), UserError, r"^x must be a 2-D \[rows, D\] tensor, got shape \(2, 3, 4\)$"),
        (torch.ones(0, 4), UserError, r"^x must be non-empty: it has no rows \(shape \(0, 4\)\)$"),
        (torch.ones(3, 0), UserError, r"^x must be non-empty: it has no columns \(shape \(3, 0\)\)$"),
        (torch.ones(3, 4, dtype=torch.int64), UserError, r"^x: dtype torch.int64 is not a floating-point type$"),
        (torch.ones(3, 5), UserError, r"^x has width 5, expected 4 \(the DiT caption width\)$"),
        (torch.full((3, 4), float("inf")), NonFiniteError, r"^x: 0 NaN and 12 Inf values in \(3, 4\) rows$"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            check_rows(bad, "x", width=4, width_of="the DiT caption width")
    assert check_rows(torch.full((1, 2), float("nan")), "x", finite=False).isnan().all()  # the caller's choice
    with pytest.raises(BlendError, match=r"^x: 1 NaN"):  # the caller's error type, for shape and NaN alike
        check_rows(torch.tensor([[float("nan")]]), "x", error=BlendError)


def test_check_number_accepts_finite_reals_in_range_and_names_the_rule():
    assert check_number(3, "k", lambda x: x >= 1, "an int >= 1", integer=True) == 3.0
    assert check_number(0.5, "w", lambda x: 0 <= x <= 1, "in [0, 1]") == 0.5
    for bad in (True, "0.5", float("nan"), float("inf"), None, 1.5):
        with pytest.raises(BlendError, match=rf"^k must be an int >= 1, got {re.escape(repr(bad))}$"):
            check_number(bad, "k", lambda x: x >= 1, "an int >= 1", integer=True, error=BlendError)
    with pytest.raises(UserError, match=r"^w must be in \[0, 1\], got 2$"):
        check_number(2, "w", lambda x: 0 <= x <= 1, "in [0, 1]")


def test_check_choice_names_the_value_and_the_valid_names():
    assert check_choice("b", ("a", "b"), "mode") == "b"
    for bad in ("c", None, 1):
        with pytest.raises(BlendError, match=rf"^unknown mode {re.escape(repr(bad))}; valid: a, b$"):
            check_choice(bad, ("a", "b"), "mode", BlendError)


def test_every_row_taking_api_refuses_bad_rows_with_the_one_validator(zoo):
    """One validator: blends, statistics, steering, DiT injection and adapters all refuse a 3-D tensor with the same
    words, after their own label."""
    from diffusers import ZImagePipeline

    from llm_dit.maths.normalize import normalize
    from llm_dit.maths.steer import apply_direction, direction_mean_difference
    from llm_dit.models.inject import inject_conditioning

    cube, rows = torch.ones(2, 3, 64), torch.ones(3, 64)
    pipe = ZImagePipeline.from_pretrained(zoo / "zimage")
    calls = {
        "adain: vl": lambda: blend(rows, cube, "adain", 0.5),
        "embeddings": lambda: normalize(cube, "global", {"per_dim_mean": rows[0], "per_dim_std": rows[0]}),
        "steering: positive example 0": lambda: direction_mean_difference([cube], [rows]),
        "apply_direction: text": lambda: apply_direction(cube, rows[0], 1.0),
        "injected conditioning 0": lambda: inject_conditioning(pipe.transformer, [0], [cube]),
        "adapter input": lambda: Adapter(64)(cube),
    }
    for label, call in calls.items():
        with pytest.raises(UserError, match=rf"^{label} must be a 2-D \[rows, D\] tensor, got shape"):
            call()


def fresh(zoo, **vl):
    """A generator with no cache (so the poisoned model really runs) and default normalisation/masking (none)."""
    cfg = load_config(overrides={"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl")})
    return Generator(cfg.model_copy(update={"vl": cfg.vl.model_copy(update=vl)}), cache=False)


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_non_finite_vl_rows_fail_at_the_extraction_even_without_normalisation(zoo, value):
    g = fresh(zoo)
    assert g.config.vl.normalize == "none" and g.config.vl.outlier_masking == "none"
    with torch.no_grad():
        g.components.vl.model.model.language_model.layers[0].mlp.down_proj.weight.fill_(value)
    with pytest.raises(UserError, match=r"^VL extraction layer -6: \d+ NaN and \d+ Inf values.*vl.dtype float32"):
        g.prepare("a fox", rgb(REF))


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_non_finite_text_rows_fail_at_the_text_encoder(zoo, value):
    g = fresh(zoo)
    with torch.no_grad():
        g.components.text_encoder.model.layers[0].mlp.down_proj.weight.fill_(value)
    with pytest.raises(UserError, match=r"^text encoder layer -2: .*encoder.dtype float32"):
        g.prepare("a fox")


def test_cli_with_a_broken_vl_checkpoint_exits_2_naming_the_stage(cli, zoo, tmp_path, monkeypatch):
    broken = tmp_path / "qwen3-vl"
    shutil.copytree(zoo / "qwen3-vl", broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.language_model.layers.0.mlp.down_proj.weight"].fill_(float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv("LLM_DIT_CACHE", str(tmp_path / "cache"))  # nothing cached from the intact model
    out = tmp_path / "x.png"
    args = ["--zimage", zoo / "zimage", "--vl", broken, "-p", "a fox", "-i", REF, "--steps", "2"]
    r = cli("generate", *args, "--width", "64", "--height", "64", "-o", out)
    assert r.code == 2 and "VL extraction layer -6" in r.err and "NaN" in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists()


def test_adapter_overflow_fails_at_the_adapter(zoo, tmp_path):
    g = fresh(zoo)
    path = tmp_path / "a.safetensors"
    adapter = Adapter(g.components.caption_width)
    with torch.no_grad():  # finite, so the file loads; x·3e38 + 3e38 overflows float32 for any x > 0.14
        adapter.weight.mul_(3e38)
        adapter.bias.fill_(3e38)
    adapter.save(path)
    with pytest.raises(UserError, match=rf"^adapter {path}: \d+ NaN and \d+ Inf"):
        fresh(zoo, adapter=str(path), blend="interpolate").prepare("a fox", rgb(REF))


@pytest.mark.parametrize("mode", ["interpolate", "adain_per_dim", "gem_pool", "slerp", "concat"])
def test_a_blend_never_returns_nan(mode):
    t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    v = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    v[2, 1] = float("nan")
    with pytest.raises(BlendError, match=rf"^blend mode {mode}: \d+ NaN"):
        blend(t, v, mode, 0.5)


# ------------------------------------------------------------------------------------------------ whiten


def test_whiten_shrinkage_gain_on_known_numbers():
    """W = C_V^(−1/2) of the shrunk covariance: V = [[1, 0], [−1, 0]] has C_V = diag(1, 0); shrunk with λ,
    (1−λ)·diag(1, 0) + λ·(1/2)·I; so W = diag((1 − λ/2)^(−1/2), (λ/2)^(−1/2)), and at λ = 0 the null eigenvalue
    is clamped to 1e-8: gain 1e4."""
    v = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    for lam, gains in ((0.5, (1 / math.sqrt(0.75), 2.0)), (0.1, (1 / math.sqrt(0.95), 1 / math.sqrt(0.05)))):
        torch.testing.assert_close(_sym_pow(_shrunk_cov(v, lam), -0.5), torch.diag(torch.tensor(gains)))
    torch.testing.assert_close(_sym_pow(_shrunk_cov(v, 0.0), -0.5), torch.diag(torch.tensor([1.0, 1e4])))


def test_whiten_refuses_shrinkage_zero_with_a_singular_vl_covariance():
    t = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))  # n_v = D: rank <= 7
    with pytest.raises(BlendError, match=r"^whiten: shrinkage 0 needs more VL rows than dimensions \(n_v = 8 <= D = 8"):
        whiten(t, v, 0.5, shrinkage=0.0)
    with pytest.raises(BlendError, match="shrinkage 0"):
        whiten(t, v, 0.0, shrinkage=0.0)  # refused at alpha 0 too: the trial blend catches it before the DiT
    assert torch.isfinite(whiten(t, v, 0.5, shrinkage=0.1)).all()
    tall = torch.randn(9, 8, generator=torch.Generator().manual_seed(2))  # n_v = D + 1: full rank is possible
    assert torch.isfinite(whiten(t, tall, 0.5, shrinkage=0.0)).all()
