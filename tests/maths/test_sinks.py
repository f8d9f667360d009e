"""Attention sinks (massive activations): the detector, statistics on content rows only, sink rows kept out of
every blend, the records and reports that list them, no implicit sink-contaminated statistics, and the clamp guard.

Random tiny weights have no sinks (the largest row is < 3x the median row's), so sinks are planted: a few rows get
values 10^3x the rest in two dimensions, either in synthetic tensors or by wrapping the models' `hidden_rows`."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from llm_dit.conditioning.source import (
    WHOLE_TEXT_MODES,
    Steering,
    VLRows,
    blend_conditioning,
    drop_sinks,
    steer_conditioning,
)
from llm_dit.config.settings import ConfigError, load_config
from llm_dit.core.errors import UserError
from llm_dit.core.files import load_tensors
from llm_dit.generation.generate import Generator
from llm_dit.maths.blend import ALPHA_VALUES, BLEND_MODES, blend
from llm_dit.maths.compose import extract_style
from llm_dit.maths.normalize import normalize
from llm_dit.maths.outliers import get_outlier_dimensions, mask_outlier_dimensions, std_ratios
from llm_dit.maths.refstats import ReferenceStats, compute_reference_stats, shipped_stats
from llm_dit.maths.sinks import describe_sinks, find_sinks
from llm_dit.maths.stats import StatsError, describe
from llm_dit.maths.steer import apply_direction
from llm_dit.models.text import TextEncoder, render_prompt
from llm_dit.models.vl import VLEmbeddingExtractor

from ..conftest import REPO, tiny_config

REF = REPO / "examples" / "reference-images" / "purple_hexagon.png"
SINK_DIMS = (1, 2)
IM_END = "<|im_end|>"


def plant(rows: torch.Tensor, positions, scale: float = 1e3) -> torch.Tensor:
    """A copy of `rows` whose rows at `positions` carry ±scale x the typical row maximum in dims 1 and 2."""
    out = rows.clone()
    typical = float(rows.float().abs().amax(1).median())
    for p in positions:
        out[p, SINK_DIMS[0]] = 3.0 * scale * typical
        out[p, SINK_DIMS[1]] = -2.0 * scale * typical
    return out


def with_sinks_inserted(content: torch.Tensor, positions, scale: float = 1e3) -> tuple[torch.Tensor, torch.Tensor]:
    """`content` with extra sink rows inserted so that they sit at `positions`; returns (rows, sink mask)."""
    n = content.shape[0] + len(positions)
    sinks = torch.zeros(n, dtype=torch.bool)
    sinks[list(positions)] = True
    rows = torch.empty(n, content.shape[1], dtype=content.dtype)
    rows[~sinks] = content
    rows[sinks] = content[: len(positions)] * 0.5
    return plant(rows, positions, scale), sinks


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- the detector


def test_find_sinks_on_known_numbers():
    # row maxima |x|: 1, 2, 3, 100, 61 -> median 3, so r = 20 flags rows above 60
    rows = torch.tensor([[1.0, 0.5], [0.0, -2.0], [3.0, 1.0], [-100.0, 4.0], [0.0, 61.0]])
    assert find_sinks(rows).tolist() == [False, False, False, True, True]
    assert find_sinks(rows, ratio=25.0).tolist() == [False, False, False, True, False]
    # even count: the lower median (3) is the reference
    even = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0], [70.0]])
    assert find_sinks(even).tolist() == [False, False, False, False, True, True]
    assert find_sinks(torch.tensor([[1e30, -1e30]])).tolist() == [False]  # a single row is never a sink
    assert not find_sinks(torch.full((7, 3), 5.0)).any()  # rows equal to the median are content
    for bad in (1.0, 0.5, math.inf, math.nan):
        with pytest.raises(StatsError, match=r"vl.sink_ratio"):
            find_sinks(rows, bad)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.lists(st.floats(-(2.0**64), 2.0**64, allow_nan=False, width=32), min_size=n * 3, max_size=n * 3)
    ),
    st.floats(1.0001, 1e6),
)
def test_the_detector_never_flags_the_median_row_or_more_than_half(values, ratio):
    rows = torch.tensor(values).reshape(-1, 3)
    sinks = find_sinks(rows, ratio)
    n = rows.shape[0]
    assert int(sinks.sum()) <= n // 2
    peaks = rows.abs().amax(1)
    assert not sinks[peaks <= peaks.median()].any()


def test_describe_sinks_gives_positions_tokens_dims_and_values():
    rows = torch.tensor([[1.0, 0.5, 0.0], [0.2, -900.0, 300.0], [0.5, 0.5, 1.0], [2.0, 1.0, 0.0]])
    sinks = find_sinks(rows)
    assert sinks.tolist() == [False, True, False, False]
    found = describe_sinks(rows, sinks, 20.0, positions=[10, 11, 12, 13], token=lambda p: f"tok{p}", top_dims=2)
    assert found["count"] == 1 and found["ratio"] == 20.0 and found["median_max_abs"] == 1.0
    (row,) = found["rows"]
    assert row["position"] == 11 and row["token"] == "tok11"
    assert row["max_abs"] == 900.0 and row["ratio_to_median"] == 900.0
    assert row["dims"] == [[1, -900.0], [2, 300.0]]
    json.dumps(found)  # a record


# ------------------------------------------------------------------------------------------ statistics


def test_reference_stats_are_computed_on_content_rows_and_list_the_sinks():
    prompts = [randn(9, 6, seed=s) for s in (1, 2, 3)]
    planted = [plant(p, [0, 4]) for p in prompts]
    content = torch.cat([p[[i for i in range(9) if i not in (0, 4)]] for p in prompts])
    stats = compute_reference_stats(planted, -2, "m", 3, token=lambda prompt, pos: f"p{prompt}t{pos}")
    torch.testing.assert_close(stats.per_dim_mean, content.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.per_dim_std, content.std(0, correction=0), rtol=1e-5, atol=1e-6)
    assert stats.token_count == 21 and stats.metadata["sink_count"] == "6"
    assert float(stats.metadata["sink_ratio"]) == 20.0
    sinks = json.loads(stats.metadata["sinks"])
    assert [(s["prompt"], s["position"], s["token"]) for s in sinks] == [
        (p, i, f"p{p}t{i}") for p in range(3) for i in (0, 4)
    ]
    assert all({d for d, _ in s["dims"][:2]} == set(SINK_DIMS) for s in sinks)


def test_normalisation_moments_come_from_content_rows():
    content = randn(20, 5, seed=4) * 2 + 1
    rows, sinks = with_sinks_inserted(content, [0, 7])
    ref = ReferenceStats(torch.arange(5.0), torch.full((5,), 3.0), layer=-6, model="m", prompt_count=1, token_count=9)
    for mode in ("global", "per_dim", "hybrid"):
        out = normalize(rows, mode, ref, content=~sinks)
        torch.testing.assert_close(out[~sinks], normalize(content, mode, ref), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(normalize(rows, mode, ref)[~sinks], out[~sinks])  # the old all-rows moments


def test_outlier_analysis_and_clamp_scale_fit_on_content_rows():
    ref = {"per_dim_mean": torch.zeros(5), "per_dim_std": torch.ones(5)}
    content = randn(30, 5, seed=5) * torch.tensor([1.0, 1.0, 1.0, 50.0, 0.01])
    rows, sinks = with_sinks_inserted(content, [3, 11])
    assert [d for d, _ in get_outlier_dimensions(content, 10.0, ref)] == [4, 3]
    assert [d for d, _ in get_outlier_dimensions(rows, 10.0, ref)] != [4, 3]  # sinks make dims 1, 2 outliers
    for mode in ("zero", "clamp", "scale", "reference"):
        out, info = mask_outlier_dimensions(rows, 10.0, mode, ref, content=~sinks)
        clean, clean_info = mask_outlier_dimensions(content, 10.0, mode, ref)
        assert info["masked_dimensions"] == clean_info["masked_dimensions"], mode
        assert info["row_count"] == 30
        torch.testing.assert_close(out[~sinks], clean, rtol=1e-5, atol=1e-5)


def test_every_blend_mode_ignores_planted_sinks_and_keeps_text_sinks_bitwise():
    t_content, v_content = randn(8, 16, seed=6), randn(30, 16, seed=7) * 2 + 0.5
    text, t_sinks = with_sinks_inserted(t_content, [0, 5])
    vl, v_sinks = with_sinks_inserted(v_content, [0, 9, 20])
    neutral = randn(25, 16, seed=8)
    assert torch.equal(find_sinks(text), t_sinks) and torch.equal(find_sinks(vl), v_sinks)
    kept, record = drop_sinks(vl, 20.0, "exclude")
    assert torch.equal(kept, v_content) and record["count"] == 3 and record["action"] == "dropped"
    for mode in BLEND_MODES:
        options = {"neutral": neutral} if mode == "style_delta" else {}
        alpha = 1.0 if mode in ALPHA_VALUES else 0.6  # a switch (replace) takes 0 or 1
        combine = blend_conditioning(text, extract_style(mode, kept, options), mode, options, t_sinks, "exclude")
        out = combine(text, alpha)
        if mode in WHOLE_TEXT_MODES:  # T whole (concat), or V's content rows alone (replace)
            torch.testing.assert_close(out, blend(text, v_content, mode, alpha, **options))
            if mode == "concat":
                assert torch.equal(out[: len(text)], text)
            continue
        expected = blend(t_content, v_content, mode, alpha, **options)
        torch.testing.assert_close(out[~t_sinks], expected, rtol=1e-5, atol=1e-5, msg=mode)
        assert torch.equal(out[t_sinks], text[t_sinks]), mode
        assert torch.equal(combine(text, 0.0), text), mode
    # the old behaviour (every row blended as content) is what `include` gives, and it is not the same
    old = blend(text, vl, "adain_per_dim", 0.6)
    style = extract_style("adain_per_dim", vl)
    assert torch.equal(blend_conditioning(text, style, "adain_per_dim", {}, t_sinks, "include")(text, 0.6), old)
    assert not torch.allclose(old[~t_sinks], blend(t_content, v_content, "adain_per_dim", 0.6), atol=1e-2)


def test_steering_scale_is_the_content_rows_std_and_sink_rows_pass_unchanged():
    t_content = randn(10, 16, seed=9) * 3
    text, sinks = with_sinks_inserted(t_content, [0, 6])
    d = torch.nn.functional.normalize(randn(16, seed=10), dim=0)
    out = steer_conditioning(text, d, sinks, "exclude")(text, 2.0)
    torch.testing.assert_close(out[~sinks], apply_direction(t_content, d, 2.0))
    torch.testing.assert_close(out[~sinks], t_content + 2.0 * t_content.std(correction=0) * d)
    assert torch.equal(out[sinks], text[sinks])
    included = steer_conditioning(text, d, sinks, "include")(text, 2.0)
    torch.testing.assert_close(included, text + 2.0 * t_content.std(correction=0) * d)
    assert text.std(correction=0) > 50 * t_content.std(correction=0)  # what the old σ(T) would have used


# ----------------------------------------------------------------------------- extraction and generation


def im_end_position(tokenizer, ids) -> int:
    return list(ids).index(tokenizer.convert_tokens_to_ids(IM_END))


@pytest.fixture
def planted(monkeypatch):
    """Both models' hidden rows get sinks: text rows at 0 and <|im_end|>, VL rows at 0 and the first image pad."""
    text_rows, vl_rows = TextEncoder.hidden_rows, VLEmbeddingExtractor.hidden_rows

    def text_hidden(self, token_ids, layers):
        where = [0, im_end_position(self.tokenizer, token_ids)]
        return {layer: plant(r, where) for layer, r in text_rows(self, token_ids, layers).items()}

    def vl_hidden(self, image, text, layers, system_prompt=None, max_pixels=None):
        rows, ids, prompt, status = vl_rows(self, image, text, layers, system_prompt)
        where = [0] + ([ids.index(self.ids["pad"])] if self.ids["pad"] in ids else [])
        return {layer: plant(r, where) for layer, r in rows.items()}, ids, prompt, status

    monkeypatch.setattr(TextEncoder, "hidden_rows", text_hidden)
    monkeypatch.setattr(VLEmbeddingExtractor, "hidden_rows", vl_hidden)
    return {"text": text_rows, "vl": vl_rows}


def generator(zoo, low_memory: bool = False, **vl) -> Generator:
    return Generator(tiny_config(zoo, **{"models.low_memory": low_memory, **{f"vl.{k}": v for k, v in vl.items()}}))


def test_text_encoder_reference_stats_leave_planted_sinks_out(zoo, planted):
    enc = generator(zoo).components.text_encoder
    prompts = ["a red fox", "a quiet harbour at dawn"]
    stats = enc.reference_stats([-6], prompts)[-6]
    content = []
    for prompt in prompts:
        ids = enc.tokenizer(render_prompt(enc.tokenizer, prompt), add_special_tokens=False).input_ids
        rows = planted["text"](enc, ids, [-6])[-6].float()  # the rows before planting
        skip = {0, im_end_position(enc.tokenizer, ids)}
        content.append(rows[[i for i in range(len(rows)) if i not in skip]])
    content = torch.cat(content)
    torch.testing.assert_close(stats.per_dim_std, content.std(0, correction=0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats.per_dim_mean, content.mean(0), rtol=1e-4, atol=1e-6)
    sinks = json.loads(stats.metadata["sinks"])
    assert stats.metadata["sink_count"] == "4" and stats.token_count == content.shape[0]
    assert [s["token"] for s in sinks] == ["<|im_start|>", IM_END] * 2


def test_extraction_drops_vl_sinks_before_masking_and_normalisation(zoo, planted):
    gen = generator(zoo)
    img = Image.open(REF).convert("RGB")
    raw, ids, _, _ = planted["vl"](gen.components.vl, img, "a fox", [-6])
    sink_at = [0, ids.index(gen.components.vl.ids["pad"])]
    content = torch.ones(len(ids), dtype=torch.bool)
    content[sink_at] = False
    spans = gen.components.vl.extract(img, "a fox", -6).spans
    pad = torch.zeros(len(ids), dtype=torch.bool)
    pad[slice(*spans.image_pad)] = True
    # half the dimensions vary 10x more than this reference (compressed), half 40x less (left alone by clamp)
    spread = raw[-6].std(0) * torch.tensor([0.1, 40.0]).repeat(32)
    ref = ReferenceStats(raw[-6].mean(0), spread, layer=-6, model="t", prompt_count=1, token_count=9)
    settings = {"outlier_masking": "clamp", "outlier_threshold": 1.5, "normalization": "per_dim", "reference": ref}

    e = gen.components.vl.extract(img, "a fox", -6, **settings)
    masked, info = mask_outlier_dimensions(raw[-6][content], 1.5, "clamp", ref, rows=pad[content])
    expected = normalize(masked, "per_dim", ref)
    torch.testing.assert_close(e.embeddings, expected, rtol=1e-5, atol=1e-5)
    assert e.masked_dimensions == list(zip(info["masked_dimensions"], info["ratios"], strict=True))
    assert len(e.masked_dimensions) == 32 and len(e.outliers_unchanged) == 32  # the clamp guard, reported
    assert e.outliers_unchanged == info["unchanged_dimensions"]
    meta = e.metadata()
    assert meta["sinks"]["action"] == "dropped" and [r["position"] for r in meta["sinks"]["rows"]] == sink_at
    assert meta["sinks"]["rows"][0]["token"] == "<|im_start|>" and meta["settings"]["sink_rows"] == "exclude"
    assert {d for d, _ in meta["sinks"]["rows"][0]["dims"][:2]} == set(SINK_DIMS)

    inc = gen.components.vl.extract(img, "a fox", -6, sink_rows="include", **settings)
    assert inc.embeddings.shape[0] == len(ids) and inc.sinks["action"] == "blended"
    torch.testing.assert_close(inc.embeddings[content], e.embeddings, rtol=1e-5, atol=1e-5)  # same statistics


def test_generation_keeps_text_sinks_drops_vl_sinks_and_records_both(zoo, planted):
    img = Image.open(REF).convert("RGB")
    gen = generator(zoo)
    cond, text_side = gen.condition("a fox", img)
    text = cond.text
    t_sinks = torch.zeros(len(text), dtype=torch.bool)
    t_sinks[[0, im_end_position(gen.components.text_encoder.tokenizer, text_side.encoded.token_ids)]] = True
    rows, ids, _, _ = gen.components.vl.hidden_rows(img, "a fox", [-6])
    vl = rows[-6]  # with the planted sinks
    v_keep = torch.ones(len(ids), dtype=torch.bool)
    v_keep[[0, ids.index(gen.components.vl.ids["pad"])]] = False
    assert torch.equal(find_sinks(vl), ~v_keep)

    out = cond.at(0.3)
    assert torch.equal(out[t_sinks], text[t_sinks])
    expected = blend(text[~t_sinks], vl[v_keep], "adain_per_dim", 0.3)
    torch.testing.assert_close(out[~t_sinks], expected, rtol=1e-5, atol=1e-5)

    rec = cond.record["sinks"]
    assert rec["ratio"] == 20.0 and rec["rows"] == "exclude" and rec["text"]["action"] == "unchanged"
    assert [(r["position"], r["token"]) for r in rec["text"]["rows"]] == [(0, "<|im_start|>"), (7, IM_END)]
    assert cond.record["vl"]["-6"]["sinks"]["count"] == 2

    # given VL rows get the same treatment
    given, _ = gen.condition("a fox", VLRows(vl))
    torch.testing.assert_close(given.at(0.3), out, rtol=1e-5, atol=1e-5)
    assert given.record["sinks"]["vl"]["action"] == "dropped" and given.record["sinks"]["vl"]["count"] == 2

    # include: the old behaviour, every row blended as content, and recorded as such
    inc, _ = generator(zoo, sink_rows="include").condition("a fox", img)
    assert torch.equal(inc.at(0.3), blend(text, vl, "adain_per_dim", 0.3))
    assert inc.record["sinks"]["rows"] == "include" and inc.record["sinks"]["text"]["action"] == "blended"
    assert inc.record["vl"]["-6"]["sinks"]["action"] == "blended"

    # steering: σ over T's content rows, sink rows unchanged
    d = torch.nn.functional.normalize(randn(text.shape[1], seed=11), dim=0)
    steered, _ = gen.condition("a fox", Steering(d))
    s = steered.at(1.0)
    assert torch.equal(s[t_sinks], text[t_sinks])
    torch.testing.assert_close(s[~t_sinks], text[~t_sinks] + text[~t_sinks].std(correction=0) * d)


def test_low_memory_names_text_sinks_before_the_encoder_is_released(zoo, planted):
    gen = generator(zoo, low_memory=True)
    cond, _ = gen.condition("a fox", Image.open(REF).convert("RGB"))
    assert [r["token"] for r in cond.record["sinks"]["text"]["rows"]] == ["<|im_start|>", IM_END]
    assert "text_encoder" not in gen.components.loaded()  # not reloaded to name the tokens


def test_generator_normalises_with_same_layer_content_statistics(zoo, planted):
    img = Image.open(REF).convert("RGB")
    gen = generator(zoo, normalize="per_dim", hidden_layer=-4)
    cond, _ = gen.condition("a fox", img)
    stats = gen.components.reference_stats([-4], gen.config.vl)[-4]
    assert stats.layer == -4 and int(stats.metadata["sink_count"]) == 2 * 12  # two planted rows per prompt
    e = cond.record["vl"]["-4"]
    assert e["settings"]["normalization"] == "per_dim" and e["sinks"]["count"] == 2


def test_extraction_refuses_missing_or_other_layer_statistics(zoo, tmp_path, cli):
    x = generator(zoo).components.vl
    img = Image.open(REF).convert("RGB")
    for needs_stats in ({"normalization": "per_dim"}, {"outlier_masking": "zero"}):
        with pytest.raises(UserError, match=r"need reference statistics of layer -6.*llm-dit stats --layer -6"):
            x.extract(img, "a fox", **needs_stats)
    other = ReferenceStats(torch.zeros(64), torch.ones(64), layer=-2, model="t", prompt_count=1, token_count=2)
    with pytest.raises(UserError, match=r"from layer -2, extracting layer -6.*llm-dit stats --layer -6"):
        x.extract(img, "a fox", normalization="global", reference=other)
    with pytest.raises(UserError, match=r"no reference statistics for layer -6"):
        x.extract(img, "a fox", normalization="global", reference={-2: other})

    # the CLI: a statistics file of another layer is refused, one line, exit 2
    stats = tmp_path / "s2.safetensors"
    assert cli("stats", "--models", "tiny", "--layer", "-2", "-o", stats).code == 0
    r = cli(
        "extract",
        "--models",
        "tiny",
        "-i",
        REF,
        "--normalize",
        "per_dim",
        "--reference-stats",
        stats,
        "-o",
        tmp_path / "v.safetensors",
    )
    assert r.code == 2 and "llm-dit stats --layer -6" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "v.safetensors").exists()


def test_statistics_files_without_sink_exclusion_are_flagged(zoo, tmp_path):
    old = ReferenceStats(torch.zeros(64), torch.ones(64), layer=-6, model="t", prompt_count=1, token_count=2)
    old.save(tmp_path / "old.safetensors")
    gen = generator(zoo, reference_stats=str(tmp_path / "old.safetensors"))
    with pytest.warns(UserWarning, match="without leaving out attention-sink rows"):
        gen.components.reference_stats([-6], gen.config.vl)


# ------------------------------------------------------------------------------- the shipped example file


def test_the_shipped_example_is_flagged_and_never_a_default():
    ref = shipped_stats()
    assert ref.metadata["sink_contaminated"] == "true" and "sink_ratio" not in ref.metadata
    x = randn(6, 2560, seed=12)
    with pytest.raises(TypeError):
        std_ratios(x)  # the reference is a required argument
    for call in (
        lambda: get_outlier_dimensions(x),
        lambda: mask_outlier_dimensions(x, mode="zero"),
        lambda: normalize(x, "per_dim", None),
    ):
        with pytest.raises(StatsError, match="reference statistics are required"):
            call()
    # nothing but its own definition loads it
    for path in (REPO / "src" / "llm_dit").rglob("*.py"):
        uses = re.findall(r"shipped_stats\(", path.read_text())
        assert len(uses) == (1 if path.name == "refstats.py" else 0), path  # the `def` line only


# ------------------------------------------------------------------------------------- stats and inspect


def test_stats_command_reports_planted_sinks(cli, zoo, tmp_path, planted):
    out = tmp_path / "s.safetensors"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog on a hill\n")
    r = cli("stats", "--models", "tiny", "--layer", "-6", "--prompts", prompts, "-o", out)
    assert r.code == 0, r.err
    assert r.out.strip() == str(out)  # stdout: the path only
    assert "4 attention-sink row(s)" in r.err and "vl.sink_ratio 20" in r.err
    assert "prompt 0 position 0 '<|im_start|>': dim 1 = " in r.err and "prompt 1 position" in r.err
    meta = ReferenceStats.load(out).metadata
    sinks = json.loads(meta["sinks"])
    assert meta["sink_count"] == "4" and [s["token"] for s in sinks] == ["<|im_start|>", IM_END] * 2


def test_inspect_reports_planted_sinks_and_leaves_them_out_of_its_statistics(cli, zoo, planted):
    r = cli("inspect", "--models", "tiny", "-i", REF, "-p", "a house", "--layers", "-6", "--json")
    assert r.code == 0, r.err
    layer = json.loads(r.out)["layers"]["-6"]
    vl, te = layer["sinks"]["vl"], layer["sinks"]["text_encoder"]
    assert [(s["position"], s["token"]) for s in vl["rows"]] == [(0, "<|im_start|>"), (6, "<|image_pad|>")]
    assert [s["token"] for s in te["rows"]] == ["<|im_start|>", IM_END]
    assert all({d for d, _ in s["dims"][:2]} == set(SINK_DIMS) for s in vl["rows"] + te["rows"])
    # span statistics of the image pads leave the planted pad row out
    gen = generator(zoo)
    rows, _, _, _ = gen.components.vl.hidden_rows(Image.open(REF).convert("RGB"), "a house", [-6])
    spans = layer["tokens"]
    assert spans["image_pad"] == 256
    pads = rows[-6][6:262]
    stats = layer["span_stats"]["image_pad"]
    assert stats == pytest.approx(describe(pads[1:]), rel=1e-5)
    assert layer["prompt_content_rows"] == json.loads(r.out)["prompt_rows"] - 1  # <|im_end|> left out
    table = cli("inspect", "--models", "tiny", "-i", REF, "-p", "a house", "--layers", "-6")
    assert "attention sinks (VL, ratio 20): 2" in table.out and "position 6 '<|image_pad|>'" in table.out
    assert "attention sinks (text encoder, ratio 20): 2" in table.out


def test_sink_settings_are_validated_config_keys():
    cfg = load_config()
    assert (cfg.vl.sink_ratio, cfg.vl.sink_rows) == (20.0, "exclude")
    for key, bad in (("vl.sink_ratio", 1.0), ("vl.sink_ratio", float("inf")), ("vl.sink_rows", "drop")):
        with pytest.raises(ConfigError, match=f"bad value for '{key}'"):
            load_config(overrides={key: bad})


# ----------------------------------------------------------------------------------------- clamp guard


def test_clamp_compresses_wide_columns_and_leaves_near_constant_ones_unchanged():
    ref = {"per_dim_mean": torch.zeros(3), "per_dim_std": torch.ones(3)}
    # column 0: [-50, 50] ratio 50 -> compressed to 10 (x * 10/50); column 1: ratio 1e-3, left alone; column 2: ok
    emb = torch.tensor([[-50.0, 2.999, 1.0], [50.0, 3.001, -1.0]])
    out, info = mask_outlier_dimensions(emb, 10.0, "clamp", ref)
    torch.testing.assert_close(out[:, 0], torch.tensor([-10.0, 10.0]))
    assert torch.equal(out[:, 1:], emb[:, 1:])  # the old clamp multiplied column 1 by 100
    assert info["masked_dimensions"] == [0] and info["ratios"] == pytest.approx([50.0])
    assert [d for d, _ in info["unchanged_dimensions"]] == [1]
    assert info["unchanged_dimensions"][0][1] == pytest.approx(1e-3, rel=1e-3)


def test_extraction_records_sinks_in_the_embeddings_file(cli, zoo, tmp_path, planted):
    out = tmp_path / "v.safetensors"
    r = cli("extract", "--models", "tiny", "-i", REF, "-t", "a fox", "--json", "-o", out)
    assert r.code == 0, r.err
    tensors, meta = load_tensors(out)
    assert meta["sinks"]["count"] == 2 and meta["sinks"]["action"] == "dropped"
    assert tensors["embeddings"].shape[0] == meta["spans"]["total"] - 2
    assert json.loads(r.out)["sinks"]["rows"][1]["token"] == "<|image_pad|>"
    assert not find_sinks(tensors["embeddings"]).any()


# ----------------------------------------------------------------------------------------- adapter training


def test_train_adapter_leaves_sink_rows_out_of_the_ridge_fit(cli, zoo, tmp_path, planted, monkeypatch):
    """Before: `paired_rows` read raw rows, so the ridge fit regressed T's planted <|im_end|> sink rows and pooled
    the planted image-pad sink into the image row; the fitted adapter missed the content rows by ~300x their norm
    (0.21 without the sinks). Now a pair row that is a sink in either sequence is dropped, the pooled row is made of
    content rows, and the adapter file says how many were left out."""
    from llm_dit.adapter.fit import paired_rows
    from llm_dit.adapter.model import Adapter

    refs = REPO / "examples" / "reference-images"
    captions = {"house2.png": "a cartoon house", "sunset.png": "a desert at sunset", "test_scene.png": "a street"}
    data = tmp_path / "images"
    data.mkdir()
    for name in captions:
        Image.open(refs / name).convert("RGB").resize((64, 64)).save(data / name)
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    out = tmp_path / "a.safetensors"
    r = cli("train-adapter", "--models", "tiny", "--images", data, "--captions", tmp_path / "captions.json", "-o", out)
    assert r.code == 0, r.err
    adapter, meta = Adapter.load(out)

    # the pairs the rows give without the planted sinks: what the adapter should map
    monkeypatch.setattr(TextEncoder, "hidden_rows", planted["text"])
    monkeypatch.setattr(VLEmbeddingExtractor, "hidden_rows", planted["vl"])
    gen = generator(zoo)
    pairs = [
        paired_rows(gen.components.vl, gen.components.text_encoder, Image.open(data / n).convert("RGB"), c)
        for n, c in captions.items()
    ]
    x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    with torch.no_grad():
        error = float((adapter(x) - y).norm() / y.norm())
    assert error < 1.0, error  # 296 with the sink rows in the fit, 0.21 without

    # one <|im_end|> row per caption (a sink of the text sequence) dropped; one image-pad sink per image pooled out
    assert meta["sinks"] == {
        "ratio": 20.0,
        "pair_rows": len(x),
        "dropped": 3,
        "pooled_left_out": {"vl": 3, "text": 3},
    }, meta["sinks"]
    assert meta["settings"]["vl.sink_ratio"] == 20.0


def test_stats_sink_report_shows_whether_the_threshold_separates_sinks_from_content(cli, zoo, tmp_path, planted):
    """`stats --sink-report`: the distribution of each row's max |x| over its prompt's median row max, what lies
    above `vl.sink_ratio`, and whether that threshold sits in a clear gap; a threshold above the (planted) sinks is
    said not to separate them, with the gap to move it into."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog on a hill\n")
    base = ["stats", "--models", "tiny", "--layer", "-6", "--prompts", prompts, "--sink-report"]
    r = cli(*base, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert (report["layer"], report["prompts"], report["ratio"], report["above"]) == (-6, 2, 20.0, 4)
    assert report["rows"] == sum(report["histogram"].values())
    assert report["smallest_sink"] > 1000 and report["largest_content"] < 5  # planted at ~3000x the median
    assert report["gap"] == pytest.approx(report["smallest_sink"] / report["largest_content"])
    assert report["separates"] is True and report["suggested_ratio"] is None
    assert [s["token"] for s in report["lowest_sinks"]] and {s["dims"][0][0] for s in report["lowest_sinks"]} == {1}
    q, highest = report["quantiles"], max(s["ratio"] for s in report["lowest_sinks"])
    assert q["50%"] <= q["90%"] <= q["99%"] <= q["max"] == pytest.approx(highest)

    text = cli(*base)
    assert text.code == 0, text.err
    assert "4 of " in text.out and "above vl.sink_ratio 20" in text.out and "separates" in text.out, text.out
    assert not list(tmp_path.glob("*.safetensors"))  # a report alone writes no file

    # a threshold above the sinks: nothing is above it, and the report says where the gap is
    config = tmp_path / "c.toml"
    config.write_text("[default.vl]\nsink_ratio = 5000.0\n")
    r = cli(*base, "--config", config, "--json")
    assert r.code == 0, r.err
    high = json.loads(r.out)
    assert high["above"] == 0 and high["separates"] is False and high["smallest_sink"] is None
    low, top = high["widest_gap"]
    assert low < 5 and top > 1000 and low < high["suggested_ratio"] < top
    text = cli(*base, "--config", config)
    assert "does not separate" in text.out and "vl.sink_ratio" in text.out, text.out

    # the report and the statistics file in one call; without either, one clear error
    out = tmp_path / "s.safetensors"
    r = cli(*base, "-o", out)
    assert r.code == 0 and out.is_file() and r.out.strip().endswith(str(out)), r.out
    r = cli("stats", "--models", "tiny", "--layer", "-6")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "--sink-report" in r.err, r.err
