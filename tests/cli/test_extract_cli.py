import json

import torch

from llm_dit.core.files import load_tensors

from ..conftest import REPO

REF = REPO / "examples" / "reference-images" / "house2.png"


def test_extract_json_reports_miss_then_hit_with_identical_tensors(cli, zoo, tmp_path):
    args = ["extract", "--models", "tiny", "-i", REF, "-t", "a house", "--layer", "-2", "--json"]
    first = cli(*args, "-o", tmp_path / "a.safetensors")
    second = cli(*args, "-o", tmp_path / "b.safetensors")
    assert first.code == second.code == 0, first.err + second.err
    a, b = json.loads(first.out), json.loads(second.out)
    assert (a["cache"], b["cache"]) == ("miss", "hit")
    assert a["shape"] == b["shape"] == [a["spans"]["total"], 64]
    ta, meta = load_tensors(tmp_path / "a.safetensors")
    tb, _ = load_tensors(tmp_path / "b.safetensors")
    assert torch.equal(ta["embeddings"], tb["embeddings"])
    assert meta["settings"]["hidden_layer"] == -2 and meta["model"]["fingerprint"]
    assert meta["spans"]["image_pad"][1] - meta["spans"]["image_pad"][0] == 256  # 512x512 -> 16x16 tokens


def test_extract_image_only_rows_equal_transformers_forward(cli, zoo, tmp_path):
    from llm_dit.models.vl import VLEmbeddingExtractor

    out = tmp_path / "e.safetensors"
    r = cli(
        "extract",
        "--vl",
        zoo / "qwen3-vl",
        "-i",
        REF,
        "-t",
        "a house",
        "--layer",
        "-2",
        "--token-mode",
        "image_only",
        "--normalize",
        "none",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    rows = load_tensors(out)[0]["embeddings"]
    x = VLEmbeddingExtractor.from_pretrained(str(zoo / "qwen3-vl"))
    from llm_dit.core.files import load_image

    inputs, _ = x.prepare(load_image(REF), "a house")
    with torch.no_grad():
        ref = x.model(**inputs, output_hidden_states=True).hidden_states[-2][0]
    ids = inputs["input_ids"][0].tolist()
    start = ids.index(x.ids["start"])
    torch.testing.assert_close(rows, ref[start : start + 258].float(), rtol=1e-5, atol=1e-5)


def test_encode_json_cache_and_layer(cli, zoo, tmp_path):
    a = cli("encode", "--models", "tiny", "-p", "a red fox", "--layer", "-3", "--json", "-o", tmp_path / "a.st")
    b = cli("encode", "--models", "tiny", "-p", "a red fox", "--layer", "-3", "--json", "-o", tmp_path / "b.st")
    assert json.loads(a.out)["cache"] == "miss" and json.loads(b.out)["cache"] == "hit"
    tensors, meta = load_tensors(tmp_path / "a.st")
    assert meta["hidden_layer"] == -3 and tensors["embeddings"].shape[1] == 64


def test_stats_command_writes_same_layer_statistics(cli, zoo, tmp_path):
    from llm_dit.maths.refstats import ReferenceStats

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog on a hill\n\n")
    r = cli("stats", "--models", "tiny", "--layer", "-6", "--prompts", prompts, "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r.err
    s = ReferenceStats.load(tmp_path / "s.safetensors")
    assert s.layer == -6 and s.prompt_count == 2 and s.per_dim_std.shape == (64,)


def test_inspect_json_has_the_per_layer_fields(cli, zoo):
    r = cli("inspect", "--models", "tiny", "-i", REF, "-p", "a house", "--layers", "-2", "--layers", "-6", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert set(report["layers"]) == {"-2", "-6"} and report["prompt_rows_token_match"]
    for layer in report["layers"].values():
        assert layer["tokens"]["image_pad"] == 256 and layer["tokens"]["image"] == 258
        assert {"before", "image", "image_pad", "after"} <= layer["span_stats"].keys()
        ratio = layer["std_ratio_image_pad"]
        assert {"median", "worst", "outliers_above", "outliers_below"} <= ratio.keys() and len(ratio["worst"]) == 5
        assert layer["image_influence"] > 0
        assert -1 <= layer["correlation_with_text_encoder"]["mean"] <= 1
    table = cli("inspect", "--models", "tiny", "-i", REF, "-p", "a house")
    assert table.code == 0 and "layer -8" in table.out and "image influence" in table.out
