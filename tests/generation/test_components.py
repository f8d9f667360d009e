"""Components and the shape of generation (issue 12): models load on first use and are released only by explicit
low-memory stages, a release frees the weights though loading froze them out of garbage collection (issue 28); one
`Components` serves every config with the same models and devices; the conditioning source is one typed value;
`render` makes one diffusers call."""

import gc
import os
import weakref

import pytest
import torch
from PIL import Image

import llm_dit.generation.render
from llm_dit.conditioning.source import CaptionRows, Reference, Steering, Text, VLRows, as_source, source_of
from llm_dit.config.settings import VLConfig, with_overrides
from llm_dit.core.cache import TensorCache
from llm_dit.core.errors import UserError
from llm_dit.generation.components import Components
from llm_dit.generation.generate import Generator
from llm_dit.models.text import TextEncoder

from ..conftest import REPO, tiny_config

REF = REPO / "examples" / "reference-images" / "purple_hexagon.png"


def rgb(path=REF):
    return Image.open(path).convert("RGB")


def test_reading_a_component_loads_it_and_releases_nothing(zoo):
    """A getter has no side effect on other components, even with low memory: only `stage` releases."""
    parts = Components(tiny_config(zoo, **{"models.low_memory": True}))
    assert parts.loaded() == []
    _ = parts.text_encoder, parts.vl
    _ = parts.pipeline
    assert parts.loaded() == ["text_encoder", "vl", "pipeline"]
    parts.stage("vl")
    assert parts.loaded() == ["vl", "pipeline"]
    parts.stage("pipeline")
    assert parts.loaded() == ["pipeline"]
    kept = Components(tiny_config(zoo))  # without low memory a stage releases nothing
    _ = kept.text_encoder, kept.vl
    kept.stage("pipeline")
    assert kept.loaded() == ["text_encoder", "vl"]


def weights_of(parts: Components) -> list[weakref.ref]:
    """Weak references to every parameter and buffer of the three components, each loaded here (no strong
    reference outlives this call)."""
    pipeline = [m for m in parts.pipeline.components.values() if isinstance(m, torch.nn.Module)]
    modules = [parts.text_encoder.model, parts.vl.model, *pipeline]
    return [weakref.ref(t) for m in modules for t in (*m.parameters(), *m.buffers())]


def test_a_release_frees_every_weight_of_the_released_components_though_loading_froze_them(zoo):
    """Loading leaves the objects alive then out of later collections (`loading.freeze_loaded`: `gc.freeze`), so
    a release's collection walks only what was made since; a released component's weights are freed all the same
    (only the released ones), without the full collection."""
    parts = Components(tiny_config(zoo))
    weights = weights_of(parts)
    assert gc.get_freeze_count() > 0  # the loads froze what was alive, the weights among it
    kept = weakref.ref(next(parts.pipeline.transformer.parameters()))
    parts.release("text_encoder", "vl")
    assert parts.loaded() == ["pipeline"] and kept() is not None
    parts.release("pipeline")
    assert weights and [w for w in weights if w() is not None] == []
    # freed by their reference counts and the quick collection: no reference cycle holds a model, so none is pinned
    # by the freeze when dropped without a release either, and the release did not need the full collection
    assert gc.get_freeze_count() > 0


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_a_released_model_held_only_by_a_frozen_reference_cycle_is_freed_and_its_memory_returned(zoo):
    """A model in a reference cycle is garbage only the collector finds, and frozen it is out of its reach: the
    release sees its weights still alive after the quick collection and collects everything, as before the freeze.
    The 64 MB it held go back to the system."""
    parts = Components(tiny_config(zoo))
    ballast = 64 * 2**20

    def cyclic_model() -> tuple[weakref.ref, weakref.ref]:
        model = parts.vl.model
        model.register_buffer("ballast", torch.ones(ballast // 4))
        model.loop = [model]  # model -> list -> model: refcounts alone never free it
        gc.freeze()  # the cycle made after the load is frozen too
        return weakref.ref(model), weakref.ref(model.ballast)

    assert isinstance(parts.vl.model, torch.nn.Module)  # its weights load here, before the baseline
    before = rss_bytes()
    model, held = cyclic_model()
    assert rss_bytes() - before > ballast * 0.9
    parts.release("vl")
    assert model() is None and held() is None
    assert rss_bytes() - before < ballast * 0.1


def test_low_memory_stages_before_every_dit_call_not_only_the_first(zoo, tmp_path, monkeypatch):
    """At each diffusers call of a low-memory generator no encoder is held, for the second image too (the encoders
    the second image reloads are released again before its DiT runs)."""
    gen = Generator(tiny_config(zoo, **{"models.low_memory": True}), TensorCache(tmp_path / "cache"))
    held = []
    denoise = llm_dit.generation.render.denoise
    monkeypatch.setattr(
        llm_dit.generation.render, "denoise", lambda *a, **k: held.append(gen.components.loaded()) or denoise(*a, **k)
    )
    gen.generate("a fox", rgb())
    gen.generate("a red fox", rgb())
    assert held == [["pipeline"], ["pipeline"]]


def test_low_memory_with_guidance_loads_the_text_encoder_once_per_image(zoo, tmp_path, monkeypatch):
    """The negative rows for CFG are the text encoder's work too: done before the VL stage releases it, so the
    encoder is not loaded a second time after the VL model."""
    made = []
    original = TextEncoder.from_pretrained.__func__
    monkeypatch.setattr(
        TextEncoder, "from_pretrained", classmethod(lambda cls, *a, **k: made.append(1) or original(cls, *a, **k))
    )
    gen = Generator(
        tiny_config(zoo, **{"models.low_memory": True, "generation.guidance": 2.0}), TensorCache(tmp_path / "c")
    )
    p = gen.prepare("a fox", rgb())
    assert len(made) == 1 and "text_encoder" not in gen.components.loaded()
    assert p.negative is not None and p.negative.shape[1] == p.first.shape[1]


def test_with_config_shares_components_and_refuses_other_models_or_devices(zoo):
    gen = Generator(tiny_config(zoo), cache=False)
    other = gen.with_config(with_overrides(gen.config, {"vl.alpha": 0.7, "encoder.max_length": 64}))
    assert other.components is gen.components and other.config.vl.alpha == 0.7 and gen.config.vl.alpha == 0.3
    for key, value in (("models.low_memory", True), ("vl.device", "cpu:0"), ("models.vl", str(zoo / "zimage"))):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            gen.with_config(with_overrides(gen.config, {key: value}))


def test_reference_statistics_are_computed_once_per_layer_and_sink_ratio(zoo, monkeypatch):
    """A sweep may vary vl.sink_ratio: each ratio gets statistics fitted with it, each only once."""
    parts = Components(tiny_config(zoo))
    calls = []
    original = TextEncoder.reference_stats
    monkeypatch.setattr(
        TextEncoder, "reference_stats", lambda self, *a, **k: calls.append(k) or original(self, *a, **k)
    )
    first = parts.reference_stats([-6], VLConfig(sink_ratio=20.0))[-6]
    other = parts.reference_stats([-6], VLConfig(sink_ratio=3.0))[-6]
    again = parts.reference_stats([-6, -2], VLConfig(sink_ratio=20.0))
    assert float(first.metadata["sink_ratio"]) == 20.0 and float(other.metadata["sink_ratio"]) == 3.0
    assert again[-6] is first and len(calls) == 3 and calls[-1]["sink_ratio"] == 20.0  # only -2 computed again


def test_the_source_is_one_typed_value(zoo):
    image = rgb()
    assert isinstance(as_source(None), Text) and as_source(image).image is image
    rows = torch.zeros(4, 64)
    assert isinstance(source_of(caption_rows=rows), CaptionRows) and isinstance(source_of(direction=rows[0]), Steering)
    assert source_of(vl_rows=rows, neutral=rows).neutral is rows
    with pytest.raises(UserError, match="give one of"):
        source_of(reference=image, vl_rows=rows)
    with pytest.raises(UserError, match="reference image or VL embeddings"):
        source_of(direction=rows[0], neutral=image)
    gen = Generator(tiny_config(zoo), cache=False)
    shorthand, typed = gen.prepare("a fox", image), gen.prepare("a fox", Reference(image))
    assert torch.equal(shorthand.first, typed.first) and shorthand.conditioning.source == "reference"
    given = gen.prepare("a fox", VLRows(gen.extract(image, "a fox")[0]))
    assert given.conditioning.source == "vl_embeddings"


@pytest.mark.parametrize(
    "settings",
    [{}, {"vl.alpha_schedule": "linear:0.0,0.6"}, {"vl.blend": "concat", "vl.alpha": 0.5, "vl.inject_layers": [1]}],
    ids=["rows", "schedule", "injection"],
)
def test_render_makes_one_diffusers_call_whatever_carries_the_conditioning(zoo, monkeypatch, settings):
    calls = []
    denoise = llm_dit.generation.render.denoise
    monkeypatch.setattr(
        llm_dit.generation.render, "denoise", lambda *a, **k: calls.append(k.get("callback")) or denoise(*a, **k)
    )
    record = Generator(tiny_config(zoo, **settings), cache=False).generate("a fox", rgb()).record["conditioning"]
    assert len(calls) == 1
    assert (calls[0] is not None) == ("alpha_schedule" in str(settings)) == ("alphas_used" in record)
    assert ("injection" in record) == ("vl.inject_layers" in settings)


def test_loading_components_ahead_holds_nothing_that_would_pin_them(zoo):
    """`Components.load` makes the components now and keeps no reference of its own: with `models.low_memory`
    the staged generation still frees each encoder before the DiT (the bench's memory probe once bound them to a
    local and measured every component resident as the "staged" peak)."""
    import gc
    import weakref

    gen = Generator(tiny_config(zoo, **{"models.low_memory": True}), cache=False)
    gen.components.load("text_encoder", "vl", weights=True)
    encoders = [weakref.ref(gen.components.text_encoder.model), weakref.ref(gen.components.vl.model)]
    gen.generate("a lighthouse", Image.open(REPO / "examples" / "reference-images" / "sunset.png"))
    gc.collect()
    assert [ref() for ref in encoders] == [None, None]
    assert gen.components.loaded() == ["pipeline"]
