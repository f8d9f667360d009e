"""Cost at real dimensions (issue 16.5): the decomposition cache (a sweep over alpha pays the eigendecomposition
once), `vl.max_pixels` capping a reference's image tokens, and the blend-cost bench section (timings are
measured by `llm-dit bench --preset blend-cost`, never asserted here)."""

import pytest
import torch
from PIL import Image

from llm_dit.generation.generate import Generator
from llm_dit.maths.blend import DECOMPOSITIONS, blend

from ..conftest import tiny_config


@pytest.mark.parametrize(("mode", "options"), [("whiten", {}), ("svd_style", {"k": 4}), ("gram", {"iterations": 5})])
def test_an_alpha_sweep_pays_the_decomposition_once(mode, options):
    g = torch.Generator().manual_seed(0)
    t, v = torch.randn(6, 16, generator=g), torch.randn(40, 16, generator=g)
    DECOMPOSITIONS.clear()
    swept = [blend(t, v, mode, a, **options) for a in (0.2, 0.4, 0.6, 0.8)]
    per = 2 if mode == "whiten" else 1  # whiten: C_V^(-1/2) and C_T^(1/2), each its own entry
    assert (DECOMPOSITIONS.misses, DECOMPOSITIONS.hits) == (per, 3 * per)
    for a, out in zip((0.2, 0.4, 0.6, 0.8), swept, strict=True):  # cached == computed afresh
        DECOMPOSITIONS.clear()
        assert torch.equal(out, blend(t, v, mode, a, **options))
    DECOMPOSITIONS.clear()
    blend(t, v, mode, 0.5, **options)
    blend(t, v + 1e-3, mode, 0.5, **options)  # another reference: its own decomposition
    other = {"whiten": {"shrinkage": 0.2}, "svd_style": {"k": 2}, "gram": {"iterations": 6}}[mode]
    blend(t, v, mode, 0.5, **other)  # other settings: their own decomposition
    # whiten: another reference reuses T's C_T^(1/2) (one hit); other settings pay both again
    assert (DECOMPOSITIONS.misses, DECOMPOSITIONS.hits) == ((5, 1) if mode == "whiten" else (3, 0))


def test_max_pixels_caps_the_reference_tokens_and_is_recorded(zoo):
    """The tiny zoo's image processor is Qwen3-VL's (patch 16, merge 2): a 2048² reference is 4096 image tokens,
    16x a 512²'s; with vl.max_pixels = 1024·32·32 it is resized to 1024² = 1024 tokens. The extraction and the
    record run at 1024² -> 512² (1024 -> 256 tokens) to stay cheap."""
    cap = 1024 * 32 * 32
    plain = Generator(tiny_config(zoo, **{"vl.image_check": False}), cache=False)
    capped = Generator(tiny_config(zoo, **{"vl.max_pixels": cap, "vl.image_check": False}), cache=False)
    big = Image.new("RGB", (2048, 2048), (120, 60, 200))
    grid = lambda gen, im: gen.components.vl.prepare(im, "x", None, gen.config.vl.max_pixels)[0]["image_grid_thw"]  # noqa: E731
    assert grid(plain, big).tolist() == [[1, 128, 128]] and grid(capped, big).tolist() == [[1, 64, 64]]

    image = Image.new("RGB", (1024, 1024), (120, 60, 200))
    small = Generator(tiny_config(zoo, **{"vl.max_pixels": 512 * 512, "vl.image_check": False}), cache=False)
    rows, extracted = small.extract(image, "a fox")
    rows_plain, _ = plain.extract(image, "a fox")
    assert rows_plain.shape[0] - rows.shape[0] == 1024 - 256
    e = next(iter(extracted.values()))
    assert e.settings["image_size"] == {"shortest_edge": 65536, "longest_edge": 512 * 512}
    result = small.generate("a fox", image)
    assert result.record["settings"]["vl.max_pixels"] == 512 * 512
    assert result.record["conditioning"]["vl"]["-6"]["settings"]["image_size"]["longest_edge"] == 512 * 512
    assert plain.generate("a fox").record["inactive_settings"]["vl.max_pixels"] == "text-only conditioning"


def test_the_blend_cost_section_reports_every_mode_and_step(zoo):
    from llm_dit.bench.blend_cost import RESOLUTIONS, blend_cost
    from llm_dit.maths.blend import BLEND_MODES
    from llm_dit.maths.normalize import NORMALIZATION_MODES
    from llm_dit.maths.outliers import OUTLIER_MODES

    result = blend_cost(1, d=32, vl_rows=40, text_rows=6)
    assert set(result["blend_ms"]) == set(BLEND_MODES)
    for mode in ("whiten", "svd_style", "gram"):
        per = 2 if mode == "whiten" else 1  # whiten: C_V^(-1/2) and C_T^(1/2), each its own entry
        assert result["blend_ms"][mode]["cache_misses"] == per and result["blend_ms"][mode]["cache_hits"] == 2 * per
    assert set(result["normalize_ms"]) == set(NORMALIZATION_MODES)
    assert set(result["outlier_masking_ms"]) == set(OUTLIER_MODES)
    tokens = result["vl_tokens"]
    assert [tokens[f"{s}x{s}"]["default_tokens"] for s in RESOLUTIONS] == [256, 1024, 2304, 4096]
    assert [tokens[f"{s}x{s}"]["capped_tokens"] for s in RESOLUTIONS] == [256, 1024, 1024, 1024]
