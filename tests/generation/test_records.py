"""Records say what acted (llm_dit.generation.provenance): `settings` holds the settings that acted for this image,
`inactive_settings` every other one with its reason; schedules and DiT injection record what the DiT received."""

import inspect
import json

import pytest
import torch
from PIL import Image

from llm_dit.conditioning.source import CaptionRows, VLRows
from llm_dit.config.settings import Config
from llm_dit.generation.generate import Generator
from llm_dit.generation.provenance import EXTRACTION_KEYS, RULES, extraction_settings
from llm_dit.generation.records import conditioning, direction_metadata, sidecar
from llm_dit.models.inject import padded

from ..conftest import REPO, tiny_config

REF = REPO / "examples" / "reference-images" / "purple_hexagon.png"
SMALL = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5"]

# A value other than the default for each setting the "did not act" check changes.
ALTERNATIVES = {
    "encoder.max_length": 400,
    "encoder.long_prompt_mode": "pool",
    "vl.hidden_layer": -2,
    "vl.layers": "-2",
    "vl.token_mode": "image_only",
    "vl.system_prompt": "You see images.",
    "vl.normalize": "global",
    "vl.clip_sigma": 1.5,
    "vl.hybrid_weight": 0.2,
    "vl.outlier_masking": "zero",
    "vl.outlier_threshold": 1.05,
    "vl.image_check": False,
    "vl.alpha": 0.9,
    "vl.alpha_schedule": "linear:0.1,0.9",
    "vl.blend": "interpolate",
    "vl.blend_options": {"p": 2.0},
    "vl.resample": "nearest",
}


def rgb(path):
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def gen(zoo):
    return Generator(tiny_config(zoo))


def changed(gen, section_key: str | None = None, value=None, **vl):
    """A generator with `vl` changes (and one dotted setting changed), sharing `gen`'s models and cache."""
    data = gen.config.model_dump()
    for key, v in vl.items():
        data["vl"][key] = v
    if section_key:
        section, _, key = section_key.partition(".")
        data[section][key] = value
    return gen.with_config(Config.model_validate(data))


def record_of(g, source=None, **inputs):
    """The record `render` would write, built from `prepare` (no DiT)."""
    p = g.prepare("a fox", source, **inputs)
    return sidecar(p), p


def test_every_config_key_has_a_rule():
    """The next setting added to the config must say when it acts."""
    keys = set(Config().flat())
    assert keys <= set(RULES), f"settings without a rule in provenance.RULES: {sorted(keys - set(RULES))}"


def test_extraction_settings_are_the_acting_extraction_keys_of_a_reference_record(gen):
    """What a steering direction (or any extraction) records is what a reference-conditioned image records as
    acting on its extraction: one definition of "what acted" (`provenance.RULES`)."""
    for vl in ({}, {"token_mode": "text_only", "outlier_masking": "zero"}, {"normalize": "hybrid", "layers": "-6:1"}):
        g = changed(gen, **vl)
        rec, _ = record_of(g, rgb(REF))
        expected = {k: v for k, v in rec["settings"].items() if k in EXTRACTION_KEYS}
        assert extraction_settings(g.config) == expected, vl
        assert direction_metadata("pca", g.config, {-6: 1.0}, {}, {})["settings"] == expected
    assert {"vl.sink_ratio", "vl.sink_rows"} <= set(extraction_settings(gen.config))  # they shape extracted rows
    assert "vl.outlier_threshold" not in extraction_settings(changed(gen, token_mode="text_only").config)


def test_settings_and_inactive_settings_partition_the_config(gen):
    rec, p = record_of(gen, rgb(REF))
    assert set(rec["settings"]) | set(rec["inactive_settings"]) == set(p.config.flat())
    assert not set(rec["settings"]) & set(rec["inactive_settings"])
    assert all(isinstance(r, str) and r for r in rec["inactive_settings"].values())


SCENARIOS = {
    "reference": ({}, lambda gen: rgb(REF)),
    "vl_embeddings": ({"blend": "interpolate"}, lambda gen: VLRows(gen.extract(rgb(REF), "a fox")[0])),
    "text": ({}, lambda gen: None),
    "schedule": ({"alpha_schedule": "linear:0.0,0.6"}, lambda gen: rgb(REF)),
    "text_only_tokens": ({"token_mode": "text_only"}, lambda gen: rgb(REF)),
}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIOS)
def test_a_setting_the_record_calls_inactive_does_not_change_the_caption_rows(gen, scenario):
    """The mechanism checked against the code: change each inactive setting, the caption rows of every step stay
    bit for bit the same."""
    vl, source = SCENARIOS[scenario]
    base = changed(gen, **vl)
    rec, p = record_of(base, source(gen))

    def rows(g, prepared):  # the caption rows of every step
        alphas = conditioning(prepared)["alphas"]
        return alphas, [prepared.conditioning.at(a) for a in alphas] or [prepared.first]

    alphas, before = rows(base, p)
    tried = []
    for key, reason in rec["inactive_settings"].items():
        if key not in ALTERNATIVES or reason.startswith("unset"):
            continue  # an unset setting does nothing until it is set
        g = changed(base, key, ALTERNATIVES[key])
        other_alphas, after = rows(g, g.prepare("a fox", source(gen)))
        assert other_alphas == alphas, key
        assert all(torch.equal(x, y) for x, y in zip(after, before, strict=True)), (key, reason)
        tried.append(key)
    assert len(tried) >= 3, tried


def test_vl_embeddings_record_lists_no_extraction_setting(gen):
    rows = gen.extract(rgb(REF), "a fox")[0]
    rec, _ = record_of(changed(gen, blend="interpolate", normalize="global"), VLRows(rows))
    for key in (
        "vl.hidden_layer",
        "vl.token_mode",
        "vl.normalize",
        "vl.outlier_masking",
        "vl.outlier_threshold",
        "vl.system_prompt",
        "vl.reference_stats",
        "vl.clip_sigma",
        "vl.hybrid_weight",
        "models.vl",
        "vl.image_check",
    ):
        assert key not in rec["settings"], key
        assert rec["inactive_settings"][key], key
    assert "no extraction" in rec["inactive_settings"]["vl.normalize"]
    assert {"vl.alpha", "vl.blend", "vl.resample", "vl.blend_options"} <= set(rec["settings"])
    assert "vl" not in rec["models"] and rec["image_dependence"]["checked"] is False


def test_text_only_record_lists_no_conditioning_setting(gen):
    rec, _ = record_of(gen)
    assert not [k for k in rec["settings"] if k.startswith("vl.")] and "models.vl" not in rec["settings"]
    assert rec["inactive_settings"]["vl.alpha"] == "text-only conditioning"
    assert rec["inactive_settings"]["generation.strength"].startswith("no init image")
    assert rec["conditioning"]["alpha"] is None and rec["conditioning"]["alphas"] == []


def test_dependent_settings_follow_the_settings_they_depend_on(gen):
    rec, _ = record_of(gen, rgb(REF))
    inactive = rec["inactive_settings"]
    assert {"vl.clip_sigma", "vl.hybrid_weight", "vl.outlier_threshold", "vl.reference_stats"} <= set(inactive)
    assert inactive["vl.resample"].startswith("blend adain_per_dim pairs no rows")
    assert "vl.layers" in inactive and "vl.hidden_layer" in rec["settings"]
    rec, _ = record_of(
        changed(gen, normalize="hybrid", outlier_masking="zero", layers="-6:1", blend="interpolate"),
        rgb(REF),
    )
    acted = rec["settings"]
    assert {"vl.clip_sigma", "vl.hybrid_weight", "vl.outlier_threshold", "vl.reference_stats"} <= set(acted)
    assert {"vl.layers", "vl.resample"} <= set(acted) and "vl.hidden_layer" in rec["inactive_settings"]
    rec, _ = record_of(changed(gen, "encoder.max_length", 8), rgb(REF))
    assert {"encoder.max_length", "encoder.long_prompt_mode"} <= set(rec["settings"]) and rec["text"]["shortened"]


def test_strength_acts_only_with_an_init_image(gen):
    rec, _ = record_of(changed(gen, "generation.strength", 0.5), rgb(REF), init_image=rgb(REF))
    assert rec["settings"]["generation.strength"] == 0.5 and "generation.strength" not in rec["inactive_settings"]


def test_embeddings_record_has_no_text_encoder_setting_without_guidance(gen):
    rows = gen.encode("a fox").embeddings
    rec, _ = record_of(gen, CaptionRows(rows))
    assert "encoder.hidden_layer" in rec["inactive_settings"] and "vl.blend" in rec["inactive_settings"]
    rec, _ = record_of(changed(gen, "generation.guidance", 2.0), CaptionRows(rows))
    assert "encoder.hidden_layer" in rec["settings"]  # the negative rows are encoded with it


def test_schedule_record_shows_the_alphas_not_one_alpha(gen):
    g = changed(gen, alpha=0.5, alpha_schedule="linear:0.0,0.6")
    rec = g.generate("a fox", rgb(REF)).record
    c = rec["conditioning"]
    assert c["alpha"] is None and c["alpha_schedule"] == "linear:0.0,0.6"
    assert c["alphas"] == pytest.approx([0.0, 0.6]) and c["alphas_used"] == pytest.approx([0.0, 0.6])
    assert "vl.alpha" not in rec["settings"] and "linear:0.0,0.6" in rec["inactive_settings"]["vl.alpha"]
    # a schedule that holds one value: that value acted, not vl.alpha
    rec, _ = record_of(changed(gen, alpha=0.5, alpha_schedule="linear:0.3,0.3"), rgb(REF))
    assert rec["conditioning"]["alpha"] == pytest.approx(0.3) and "vl.alpha" in rec["inactive_settings"]
    rec, _ = record_of(changed(gen, alpha=0.5), rgb(REF))
    assert rec["conditioning"]["alpha"] == 0.5 and rec["conditioning"]["alphas"] == [0.5, 0.5]
    assert rec["settings"]["vl.alpha"] == 0.5


def test_injection_records_the_caption_rows_the_dit_received(gen):
    g = changed(gen, blend="concat", alpha=0.5, inject_layers=[1])
    pipe = g.components.pipeline
    seen = {"caption": [], "embedder": []}

    def forward(module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        seen["caption"] += [len(c) for c in bound.arguments["cap_feats"]]

    handles = [
        pipe.transformer.register_forward_pre_hook(forward, with_kwargs=True),
        pipe.transformer.cap_embedder.register_forward_pre_hook(lambda m, a: seen["embedder"].append(len(a[0]))),
    ]
    try:
        result = g.generate("a fox", rgb(REF))
    finally:
        for h in handles:
            h.remove()
    c = result.record["conditioning"]
    n_t = result.record["text"]["caption_rows"]
    blended = int(g.prepare("a fox", rgb(REF)).first.shape[0])
    assert blended > n_t  # concat appends the VL rows
    assert c["caption_rows"] == n_t and set(seen["caption"]) == {n_t}  # the pipeline got T
    assert c["injection"] == {"blocks": [1], "caption_rows": n_t, "resampled_from": blended}
    assert set(seen["embedder"]) == {padded(n_t)}  # both streams, T and the aligned C, have T's rows


def test_cli_sidecar_has_settings_inactive_settings_and_image_dependence(cli, zoo, tmp_path):
    out = tmp_path / "a.png"
    r = cli("generate", "--models", "tiny", "-p", "a fox", "-i", REF, *SMALL, "-o", out)
    assert r.code == 0, r.err
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["settings"]["vl.hidden_layer"] == -6 and "generation.strength" in rec["inactive_settings"]
    assert rec["image_dependence"]["checked"] is True
